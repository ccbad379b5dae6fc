"""Improved precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric
for Assessing Generative Models") and density and coverage (Naeem et al. 2020, "Reliable
Fidelity and Diversity Metrics for Generative Models") on two feature sets.

Each set approximates its manifold by the union of balls around its samples, the radius of a
ball being the distance to the sample's k-th nearest neighbour in the same set (itself excluded):

    manifold(X) = U_i B(x_i, NND_k(x_i)),    f(y, X) = 1 if ||y - x_i|| <= NND_k(x_i) for some i

    precision = (1/M) sum_j f(y_j, real)     share of fake samples inside the real manifold
    recall    = (1/N) sum_i f(x_i, fake)     share of real samples inside the fake manifold

with real features x_1..x_N, fake features y_1..y_M and k = 3 (the paper's choice). Naeem et al.
count balls instead of asking for one (k = 5 in their paper; strict ``<`` as in their code):

    density  = (1/(k M)) sum_j sum_i [||y_j - x_i|| < NND_k(x_i)]   (about 1 when fake ~ real)
    coverage = (1/N) sum_i [min_j ||y_j - x_i|| < NND_k(x_i)]       (share of real balls hit)

Like FID, these numbers are only as meaningful as the features: name them after the extractor
("precision-EffNetLite0") unless the features are the standard Inception-V3 ones (or VGG-16's,
which the paper used).

Distances come from ``torch.cdist`` on row chunks of ``batch_size`` samples, so memory is about
``3 * batch_size * max(N, M) * 4`` bytes (about 60 MB for batch_size 1024 and 5,000 samples).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray

__all__ = ["density_coverage", "knn_radii", "precision_recall"]


def _features(x: ArrayLike, name: str, k: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    f = torch.as_tensor(x).detach().to(device, dtype)
    if f.ndim != 2 or f.shape[1] < 1:
        raise ValueError(f"{name} must be features [N, D], got shape {tuple(f.shape)}")
    if f.shape[0] <= k:
        raise ValueError(f"{name} has {f.shape[0]} samples; the k-th nearest neighbour needs more than "
                         f"k={k}")
    return f


def _check(k: int, batch_size: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def knn_radii(features: Tensor, k: int, batch_size: int = 1024) -> Tensor:
    """NND_k(x_i): distance of each row of ``features`` [N, D] to its k-th nearest other row
    (the row itself is excluded by index, so duplicates count as neighbours at distance 0)."""
    radii = []
    for start in range(0, features.shape[0], batch_size):
        d = torch.cdist(features[start:start + batch_size], features)
        rows = torch.arange(d.shape[0], device=d.device)
        d[rows, rows + start] = float("inf")
        radii.append(d.kthvalue(k, dim=1).values)
    return torch.cat(radii)


def _pairs(real_features: ArrayLike, fake_features: ArrayLike, k: int, batch_size: int,
           dtype: torch.dtype, device: str | torch.device) -> tuple[Tensor, Tensor]:
    _check(k, batch_size)
    dev = torch.device(device)
    real = _features(real_features, "real_features", k, dtype, dev)
    fake = _features(fake_features, "fake_features", k, dtype, dev)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: real {real.shape[1]}, fake {fake.shape[1]}")
    return real, fake


def precision_recall(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    k: int = 3,
    batch_size: int = 1024,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """Improved (precision, recall) of fake features [M, D] against real features [N, D], each in
    [0, 1] (Kynkaanniemi et al. 2019; see the module docstring). A sample lies in a manifold when
    its distance to some ball centre is <= that ball's radius, as in the paper's code. The result
    does not depend on ``batch_size`` (rows per distance chunk) beyond float rounding."""
    real, fake = _pairs(real_features, fake_features, k, batch_size, dtype, device)
    real_radii = knn_radii(real, k, batch_size)
    fake_radii = knn_radii(fake, k, batch_size)
    fake_inside = torch.zeros(fake.shape[0], dtype=torch.bool, device=fake.device)
    real_inside = []
    for start in range(0, real.shape[0], batch_size):
        d = torch.cdist(real[start:start + batch_size], fake)  # [b, M]: real rows, fake columns
        fake_inside |= (d <= real_radii[start:start + batch_size, None]).any(dim=0)
        real_inside.append((d <= fake_radii[None, :]).any(dim=1))
    precision = fake_inside.double().mean().item()
    recall = torch.cat(real_inside).double().mean().item()
    return precision, recall


def density_coverage(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    k: int = 5,
    batch_size: int = 1024,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """(density, coverage) of fake features [M, D] against real features [N, D] (Naeem et al.
    2020, k = 5 as in the paper; see the module docstring). Density is unbounded above (1 means
    fake samples sit in as many real balls as real samples would); coverage is in [0, 1]."""
    real, fake = _pairs(real_features, fake_features, k, batch_size, dtype, device)
    real_radii = knn_radii(real, k, batch_size)
    hits = torch.zeros((), dtype=torch.float64, device=real.device)
    covered = []
    for start in range(0, real.shape[0], batch_size):
        d = torch.cdist(real[start:start + batch_size], fake)  # [b, M]
        radii = real_radii[start:start + batch_size]
        hits += (d < radii[:, None]).sum()
        covered.append(d.amin(dim=1) < radii)
    density = hits.item() / (k * fake.shape[0])
    coverage = torch.cat(covered).double().mean().item()
    return density, coverage
