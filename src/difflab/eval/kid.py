"""Kernel distance (KID) between two feature sets: an unbiased estimate of the squared maximum mean
discrepancy (MMD^2) under a cubic polynomial kernel.

With features x_1..x_m of one set, y_1..y_n of the other, and the kernel

    k(x, y) = (gamma x.y + coef)^degree,   gamma = 1/D, coef = 1, degree = 3 by default,

the unbiased estimate (Gretton et al. 2012, "A Kernel Two-Sample Test", eq. 3) is

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
              - 2 sum_{i, j} k(x_i, y_j) / (m n).

KID (Binkowski et al. 2018, "Demystifying MMD GANs") averages MMD^2_u over random subsets of
both sets and reports mean and std over the subsets. It is unbiased, so it can be slightly
negative for two samples of the same distribution. The number is KID only when the features
are the standard Inception-V3 FID features (:class:`difflab.eval.inception.InceptionFeatures`);
on any other extractor's features call it "KID-<extractor>" (e.g. "KID-EffNetLite0").

Compared with torchmetrics' ``KernelInceptionDistance`` (same kernel, same estimator, same
population std over subsets): here ``subset_size`` larger than a set is clamped to the set size
instead of raising, the subsets come from a generator seeded by ``seed`` (torchmetrics uses the
global RNG), and everything is computed in float64.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray

__all__ = ["kernel_distance", "mmd2_unbiased", "polynomial_kernel"]


def _features(x: ArrayLike, name: str, device: str | torch.device = "cpu") -> Tensor:
    f = torch.as_tensor(x).detach().to(device, torch.float64)
    if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] < 1:
        raise ValueError(f"{name} must be features [N>=2, D>=1] (KID needs at least 2 samples per "
                         f"set), got shape {tuple(f.shape)}")
    return f


def polynomial_kernel(
    a: Tensor, b: Tensor, degree: int = 3, gamma: float | None = None, coef: float = 1.0
) -> Tensor:
    """Kernel matrix K_ij = (gamma a_i.b_j + coef)^degree for a [M, D], b [N, D]; gamma = 1/D
    when None."""
    if gamma is None:
        gamma = 1.0 / a.shape[1]
    return (a @ b.T * gamma + coef) ** degree


def _offdiag_sum(k: Tensor) -> Tensor:
    return k.sum() - k.diagonal().sum()


def mmd2_unbiased(
    a: ArrayLike, b: ArrayLike, degree: int = 3, gamma: float | None = None, coef: float = 1.0
) -> float:
    """Unbiased MMD^2 between the whole sets ``a`` [M, D] and ``b`` [N, D] (M, N >= 2, in float64)
    under k(x, y) = (gamma x.y + coef)^degree, gamma = 1/D when None (see the module docstring).
    For M = N this is exactly torchmetrics' ``poly_mmd``."""
    x, y = _features(a, "a"), _features(b, "b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: a has {x.shape[1]}, b has {y.shape[1]}")
    return _mmd2(x, y, degree, gamma, coef).item()


def _mmd2(x: Tensor, y: Tensor, degree: int, gamma: float | None, coef: float) -> Tensor:
    m, n = x.shape[0], y.shape[0]
    k_xx = polynomial_kernel(x, x, degree, gamma, coef)
    k_yy = polynomial_kernel(y, y, degree, gamma, coef)
    k_xy = polynomial_kernel(x, y, degree, gamma, coef)
    return _offdiag_sum(k_xx) / (m * (m - 1)) + _offdiag_sum(k_yy) / (n * (n - 1)) \
        - 2.0 * k_xy.sum() / (m * n)


def kernel_distance(
    features_a: ArrayLike,
    features_b: ArrayLike,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018) between two feature sets [N_a, D] and [N_b, D]: (mean, std) of
    :func:`mmd2_unbiased` over ``subsets`` pairs of subsets, each drawn without replacement,
    ``subset_size`` samples from each set. The std is the population std over subsets (as in
    torchmetrics); it describes subset-to-subset spread, not the error of the mean.

    ``subset_size`` is clamped to min(N_a, N_b), so small sets use every sample of the smaller
    set in each subset. When both sets are used whole, every subset gives the same value (the
    estimate does not depend on order), so it is computed once and the std is 0. The subsets are
    drawn with a ``torch.Generator`` seeded by ``seed``: the same inputs and seed give the same
    number. Cost: 3 float64 matrix products of subset_size^2 x D per subset, about 1 s per subset
    for 1000 x 2048 on one CPU core (so ~100 s with the defaults); ``device="cuda"`` runs them on a
    GPU (the subsets are still drawn on the CPU, so the result does not depend on the device
    beyond float64 rounding).

    Call it KID only on Inception-V3 FID features; otherwise "KID-<extractor>"."""
    a, b = _features(features_a, "features_a", device), _features(features_b, "features_b", device)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: features_a has {a.shape[1]}, features_b has {b.shape[1]}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    if subset_size < 2:
        raise ValueError(f"subset_size must be >= 2 (the unbiased estimate needs pairs), got {subset_size}")
    m = min(subset_size, a.shape[0], b.shape[0])
    if m == a.shape[0] == b.shape[0]:
        return _mmd2(a, b, degree, gamma, coef).item(), 0.0
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        idx_a = torch.randperm(a.shape[0], generator=generator)[:m].to(a.device)
        idx_b = torch.randperm(b.shape[0], generator=generator)[:m].to(b.device)
        values.append(_mmd2(a[idx_a], b[idx_b], degree, gamma, coef))
    scores = torch.stack(values).cpu().numpy()
    return float(scores.mean()), float(scores.std())
