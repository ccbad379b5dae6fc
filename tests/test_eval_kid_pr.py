"""difflab.eval.kid and difflab.eval.precision_recall on synthetic features (no network).

KID is checked against torchmetrics' implementation (same kernel, estimator and subset draws);
precision/recall and density/coverage against toy manifolds whose answers are known.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difflab.eval.kid import kernel_distance, mmd2_unbiased
from difflab.eval.precision_recall import density_coverage, knn_radii, precision_recall


def gaussian(n: int, d: int = 16, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


# ---------------------------------------------------------------------------------------------
# KID


def test_mmd_matches_torchmetrics_poly_mmd():
    kid_tm = pytest.importorskip("torchmetrics.image.kid")
    a, b = gaussian(300, 32, seed=1), gaussian(300, 32, shift=0.3, seed=2)
    expected = kid_tm.poly_mmd(a, b).item()
    assert mmd2_unbiased(a, b) == pytest.approx(expected, rel=1e-6)
    mean, std = kernel_distance(a, b, subsets=1, subset_size=300)
    assert mean == pytest.approx(expected, rel=1e-6)
    assert std == 0.0
    custom = kid_tm.poly_mmd(a, b, degree=2, gamma=0.5, coef=0.25).item()
    assert mmd2_unbiased(a, b, degree=2, gamma=0.5, coef=0.25) == pytest.approx(custom, rel=1e-6)


def test_kernel_distance_matches_torchmetrics_subsets():
    """torchmetrics draws randperm(real) then randperm(fake) per subset from the global generator;
    ours draws the same from a generator seeded by ``seed``, so the subsets coincide."""
    kid_tm = pytest.importorskip("torchmetrics.image.kid")
    real, fake = gaussian(120, 8, seed=3), gaussian(90, 8, shift=0.2, seed=4)
    with pytest.warns(UserWarning, match="save all extracted features"):
        metric = kid_tm.KernelInceptionDistance(feature=torch.nn.Identity(), subsets=5, subset_size=40)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    torch.manual_seed(7)
    tm_mean, tm_std = metric.compute()
    mean, std = kernel_distance(real, fake, subsets=5, subset_size=40, seed=7)
    assert mean == pytest.approx(tm_mean.item(), rel=1e-6)
    assert std == pytest.approx(tm_std.item(), rel=1e-6)


def test_kid_same_distribution_near_zero_and_grows_with_shift():
    base = gaussian(600, seed=10)
    same = kernel_distance(base, gaussian(600, seed=11), subsets=20, subset_size=300)[0]
    shifted = [kernel_distance(base, gaussian(600, shift=s, seed=11), subsets=20, subset_size=300)[0]
               for s in (0.25, 0.5, 1.0)]
    assert abs(same) < 0.05 * shifted[1]
    assert shifted[0] < shifted[1] < shifted[2]


def test_kid_seeded():
    a, b = gaussian(200, seed=20), gaussian(200, shift=0.5, seed=21)
    first = kernel_distance(a, b, subsets=10, subset_size=50, seed=3)
    assert kernel_distance(a, b, subsets=10, subset_size=50, seed=3) == first
    assert kernel_distance(a.numpy().astype(np.float32), b.numpy().astype(np.float32),
                           subsets=10, subset_size=50, seed=3) == pytest.approx(first, rel=1e-5)
    assert kernel_distance(a, b, subsets=10, subset_size=50, seed=4)[0] != first[0]


def test_kid_subset_size_clamped_to_smaller_set():
    a, b = gaussian(40, seed=30), gaussian(100, shift=0.5, seed=31)
    clamped = kernel_distance(a, b, subsets=4, subset_size=1000, seed=1)
    assert clamped == kernel_distance(a, b, subsets=4, subset_size=40, seed=1)
    assert clamped[1] > 0  # b is subsampled, so subsets differ


def test_kid_whole_sets_computed_once():
    a, b = gaussian(50, seed=40), gaussian(50, shift=0.5, seed=41)
    assert kernel_distance(a, b, subsets=100, subset_size=1000) == (mmd2_unbiased(a, b), 0.0)


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "match"),
    [
        (gaussian(1), gaussian(10), {}, "at least 2 samples"),
        (gaussian(10), gaussian(1), {}, "at least 2 samples"),
        (gaussian(10)[0], gaussian(10), {}, r"\[N>=2, D>=1\]"),
        (gaussian(10, 4), gaussian(10, 5), {}, "feature sizes differ"),
        (gaussian(10), gaussian(10), {"subset_size": 1}, "subset_size"),
        (gaussian(10), gaussian(10), {"subsets": 0}, "subsets"),
    ],
)
def test_kid_errors(a, b, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kernel_distance(a, b, **kwargs)


# ---------------------------------------------------------------------------------------------
# precision / recall, density / coverage

# 4 unit Gaussians in 2-d, 20 apart: low dimension, so 300+ samples fill their k-NN balls
CENTRES = torch.tensor([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]], dtype=torch.float64)


def modes(n_per_mode: int, which: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([CENTRES[m] + torch.randn(n_per_mode, 2, generator=g, dtype=torch.float64)
                      for m in which])


def test_knn_radii_excludes_self_only():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 6.0]
    duplicates = torch.tensor([[0.0], [0.0], [5.0]])
    assert knn_radii(duplicates, 1, batch_size=1).tolist() == [0.0, 0.0, 5.0]


def test_precision_recall_inclusive_boundary():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])  # radii (k=1) all 1
    fake = torch.tensor([[4.0], [10.0]])  # 4 is exactly 1 from 3; radii both 6
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)


def test_identical_sets():
    x = gaussian(400, seed=50)
    assert precision_recall(x, x) == (1.0, 1.0)
    density, coverage = density_coverage(x, x)
    assert coverage == 1.0
    assert 0.8 < density < 1.2


def test_far_shift_gives_zero():
    x = gaussian(300, seed=51)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)
    assert density_coverage(x, x + 100.0) == (0.0, 0.0)


def test_half_the_modes():
    real = modes(400, (0, 1, 2, 3), seed=52)
    fake = modes(400, (0, 1), seed=53)
    precision, recall = precision_recall(real, fake)
    assert precision > 0.95
    assert abs(recall - 0.5) < 0.05
    density, coverage = density_coverage(real, fake)
    assert abs(coverage - 0.5) < 0.05
    assert density > 0.8


def test_outlier_mode_lowers_precision_by_its_share():
    real = modes(300, (0, 1, 2), seed=54)
    clean = modes(300, (0, 1, 2), seed=55)
    outliers = modes(100, (3,), seed=56)  # 100 of 1000 fake samples, far from every real mode
    p_clean, r_clean = precision_recall(real, clean)
    p_out, r_out = precision_recall(real, torch.cat([clean, outliers]))
    assert p_clean > 0.95
    assert p_clean - p_out == pytest.approx(0.1 * p_clean, abs=0.02)
    assert abs(r_out - r_clean) < 0.05


def test_chunked_equals_unchunked():
    real = modes(150, (0, 1, 2), seed=57)
    fake = modes(150, (1, 2, 3), seed=58)
    whole = precision_recall(real, fake, batch_size=100_000)
    assert 0 < whole[0] < 1 and 0 < whole[1] < 1
    assert precision_recall(real, fake, batch_size=7) == whole
    assert precision_recall(real.numpy(), fake.numpy(), batch_size=64, dtype=torch.float64) == whole
    assert density_coverage(real, fake, batch_size=7) == density_coverage(real, fake, batch_size=100_000)


def test_distance_chunks_bounded(monkeypatch):
    """No distance matrix larger than batch_size x max(N, M) is made."""
    real, fake = gaussian(300, seed=59), gaussian(200, seed=60)
    largest = []
    cdist = torch.cdist

    def spy(a, b, *args, **kwargs):
        out = cdist(a, b, *args, **kwargs)
        largest.append(out.numel())
        return out

    monkeypatch.setattr(torch, "cdist", spy)
    precision_recall(real, fake, batch_size=32)
    assert largest and max(largest) <= 32 * 300


@pytest.mark.parametrize(
    ("real", "fake", "kwargs", "match"),
    [
        (gaussian(3), gaussian(10), {}, "more than k=3"),
        (gaussian(10), gaussian(3), {}, "more than k=3"),
        (gaussian(10, 4), gaussian(10, 5), {}, "feature sizes differ"),
        (gaussian(10)[0], gaussian(10), {}, r"\[N, D\]"),
        (gaussian(10), gaussian(10), {"k": 0}, "k must be"),
        (gaussian(10), gaussian(10), {"batch_size": 0}, "batch_size"),
    ],
)
def test_precision_recall_errors(real, fake, kwargs, match):
    with pytest.raises(ValueError, match=match):
        precision_recall(real, fake, **kwargs)
