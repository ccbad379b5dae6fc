"""Sample-quality scores as pure functions of classifier probabilities or features.

Nothing here loads a network: feed it ``probs`` [N, K] (rows sum to 1, e.g. from
:func:`difflab.eval.digit_probs`) or ``features`` [N, D] (e.g. from
:func:`difflab.eval.digit_features`). Every score is only as meaningful as the classifier that
produced its inputs; name it accordingly ("IS-digit", "FD-digit"), never "IS"/"FID", which mean
the ImageNet Inception-v3 network specifically.

Scores on probabilities (p(y|x_i) is row i, ŷ_i = argmax_y p(y|x_i)):

- confident share   C = (1/N) sum_i [max_y p(y|x_i) >= tau]
- mean confidence   (1/N) sum_i max_y p(y|x_i)
- class histogram   h_k = (1/N) sum_i [ŷ_i = k]
- class entropy     H(h) = -sum_k h_k ln h_k   (nats; ln K when every class is equally common,
                    0 when every sample is the same class: a mode-collapse detector)
- inception score   IS = exp( (1/N) sum_i KL(p(y|x_i) || p(y)) ),  p(y) = (1/N) sum_i p(y|x_i)
                    (Salimans et al. 2016, "Improved Techniques for Training GANs"); between 1
                    (all predictions identical) and K (confident and evenly spread).

Scores on features:

- Frechet distance  d^2 = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})  between the
                    Gaussians N(mu_1, S_1), N(mu_2, S_2) fitted to two feature sets (Dowson &
                    Landau 1982; used as FID by Heusel et al. 2017, "GANs Trained by a Two
                    Time-Scale Update Rule Converge to a Local Nash Equilibrium").
"""

from __future__ import annotations

import warnings
from typing import Literal, TypedDict

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray

__all__ = [
    "DigitScores",
    "class_entropy",
    "class_histogram",
    "confident_share",
    "feature_statistics",
    "frechet_distance",
    "inception_score",
    "inception_score_splits",
    "mean_confidence",
    "summarize_probs",
]


class DigitScores(TypedDict):
    """Summary of a set of generated digits, as returned by :func:`difflab.eval.digit_scores`."""

    confident_share: float
    class_entropy: float
    class_histogram: list[float]
    inception_score: float
    mean_confidence: float


def _probs(probs: ArrayLike, keep_dtype: bool = False) -> Tensor:
    p = torch.as_tensor(probs).detach().cpu()
    if not (keep_dtype and p.is_floating_point()):
        p = p.to(torch.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(f"probs must be [N>0, K>1] class probabilities, got {tuple(p.shape)}")
    return p


def confident_share(probs: ArrayLike, threshold: float = 0.9) -> float:
    """Share of samples whose top class probability is at least ``threshold``:
    C = (1/N) sum_i [max_y p(y|x_i) >= threshold]. The comparison is made in the dtype of
    ``probs`` (a float32 0.9 counts as >= 0.9)."""
    return (_probs(probs, keep_dtype=True).amax(dim=1) >= threshold).double().mean().item()


def mean_confidence(probs: ArrayLike) -> float:
    """Mean top-class probability (1/N) sum_i max_y p(y|x_i)."""
    return _probs(probs).amax(dim=1).mean().item()


def class_histogram(probs: ArrayLike) -> Tensor:
    """Predicted-class frequencies h_k = (1/N) sum_i [argmax_y p(y|x_i) = k]: float64 [K],
    summing to 1."""
    p = _probs(probs)
    counts = torch.bincount(p.argmax(dim=1), minlength=p.shape[1])
    return counts.double() / p.shape[0]


def class_entropy(probs: ArrayLike) -> float:
    """Entropy in nats of the predicted-class histogram, H(h) = -sum_k h_k ln h_k (0 ln 0 = 0).

    ln K (ln 10 = 2.303 for digits) means every class is predicted equally often; 0 means all
    samples land in one class."""
    h = class_histogram(probs)
    return -torch.xlogy(h, h).sum().item() + 0.0  # + 0.0 turns -0.0 into 0.0


def inception_score_splits(probs: ArrayLike, splits: int = 1) -> Tensor:
    """Inception score of each of ``splits`` contiguous, near-equal chunks of ``probs``
    (``torch.tensor_split``; the original code dropped the remainder instead). float64 [splits].

    Per chunk: IS = exp(mean_i KL(p(y|x_i) || p(y))) with p(y) the chunk's mean prediction."""
    p = _probs(probs)
    if not 1 <= splits <= p.shape[0]:
        raise ValueError(f"splits must be in [1, N={p.shape[0]}], got {splits}")
    scores = []
    for part in torch.tensor_split(p, splits, dim=0):
        marginal = part.mean(dim=0, keepdim=True)
        # KL(p || m) = sum p ln p - p ln m; xlogy gives 0 where p = 0 (and p > 0 implies m > 0).
        kl = (torch.xlogy(part, part) - torch.xlogy(part, marginal)).sum(dim=1)
        scores.append(torch.exp(kl.mean()))
    return torch.stack(scores)


def inception_score(probs: ArrayLike, splits: int = 1) -> float:
    """Inception score (Salimans et al. 2016) computed on whatever classifier gave ``probs``:
    IS = exp( E_x KL(p(y|x) || p(y)) ), averaged over ``splits`` chunks (the paper used 10 splits
    of 50,000 samples and reported mean ± std; see :func:`inception_score_splits` for the std).

    1 when all predictions are identical, K when predictions are one-hot and classes uniform."""
    return inception_score_splits(probs, splits).mean().item()


def summarize_probs(probs: ArrayLike, threshold: float = 0.9) -> DigitScores:
    """All probability scores of a sample set at once (see the module docstring)."""
    return DigitScores(
        confident_share=confident_share(probs, threshold),
        class_entropy=class_entropy(probs),
        class_histogram=class_histogram(probs).tolist(),
        inception_score=inception_score(probs),
        mean_confidence=mean_confidence(probs),
    )


def feature_statistics(features: ArrayLike) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance (divisor N - 1, as ``np.cov``, pytorch-fid and torchmetrics)
    of ``features`` [N, D], in float64: (mu [D], sigma [D, D])."""
    f = torch.as_tensor(features).detach().to("cpu", torch.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N>=2, D], got {tuple(f.shape)}")
    mu = f.mean(dim=0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    return mu, sigma


def _as_f64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root via eigh, with numerically negative eigenvalues clipped to 0."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^{1/2}) via symmetric eigensolvers only. With A = S1^{1/2}, B = S2^{1/2}:
    S1 S2 = A (A S2 A) A^{-1} is similar to the PSD matrix A S2 A = (AB)(AB)^T, so the trace of
    its square root is the sum of the singular values of AB (its nuclear norm). Taking singular
    values of AB instead of square roots of eigenvalues of A S2 A keeps near-zero directions (dead
    features, N < D) accurate to ~machine epsilon instead of ~sqrt(machine epsilon)."""
    product = _psd_sqrt(sigma1) @ _psd_sqrt(sigma2)
    return float(np.linalg.svd(product, compute_uv=False).sum())


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """pytorch-fid's route: scipy.linalg.sqrtm of S1 S2; on a non-finite result retry with
    eps I added to both covariances; drop an imaginary part that is only numerical noise.
    scipy's "matrix is singular" LinAlgWarning is silenced: feature covariances are routinely
    singular (dead ReLU units, N < D) and the result is checked here instead."""
    from scipy import linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"sqrtm(S1 S2) has a large imaginary part ({np.abs(covmean.imag).max():.3g}); "
                "are the covariances PSD? try method='eigh'"
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(
    mu1: ArrayLike,
    sigma1: ArrayLike,
    mu2: ArrayLike,
    sigma2: ArrayLike,
    eps: float = 1e-6,
    method: Literal["auto", "sqrtm", "eigh"] = "auto",
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64:

        d^2 = ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})

    (the squared 2-Wasserstein distance between the Gaussians; FID when the statistics come from
    Inception-v3 pool features, Heusel et al. 2017). ``method``: ``"sqrtm"`` is pytorch-fid's
    scipy.linalg.sqrtm route with its ``eps`` retry, ``"eigh"`` the symmetric eigendecomposition
    route (no scipy needed, robust for singular covariances), ``"auto"`` sqrtm when scipy is
    installed else eigh. Like pytorch-fid and torchmetrics, the result is not clamped at 0, so a
    set compared with itself can give a tiny negative number."""
    m1, m2 = _as_f64(mu1).reshape(-1), _as_f64(mu2).reshape(-1)
    s1, s2 = _as_f64(sigma1), _as_f64(sigma2)
    d = m1.shape[0]
    if m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu1 {m1.shape}, sigma1 {s1.shape}, mu2 {m2.shape}, sigma2 {s2.shape}"
        )
    if method == "auto":
        try:
            import scipy.linalg  # noqa: F401

            method = "sqrtm"
        except ImportError:
            method = "eigh"
    if method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(s1, s2, eps)
    elif method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(s1, s2)
    else:
        raise ValueError(f"method must be 'auto', 'sqrtm' or 'eigh', got {method!r}")
    diff = m1 - m2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
