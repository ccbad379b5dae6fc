"""UniPC: the unified predictor-corrector of Zhao et al. 2023 ("UniPC: A Unified
Predictor-Corrector Framework for Fast Sampling of Diffusion Models"), data-prediction form."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from difflab.config import check_choice
from difflab.diffusion import Denoiser
from difflab.noise import NoiseSource
from difflab.samplers import ve
from difflab.samplers.base import StepCallback


def _rhos(rks: list[float], h: float, variant: str, corrector: bool) -> tuple[list[float], float]:
    """Coefficients rho of UniP-p (``corrector=False``) or UniC-p and B(h): solve R rho = b with
    R_jk = r_k^(j-1) and b_j = j! h phi_{j+1}(h) / B(h) (Zhao et al. 2023, the B(h) variants of
    Algorithms 1-2; B_1(h) = h, B_2(h) = e^h - 1, with h -> -h in the data-prediction form).
    As in the reference code, UniP-2 uses rho = 1/2 and UniC-1 rho = 1/2."""
    hh = -h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rks = [*rks, 1.0]
    order = len(rks)
    h_phi_k, factorial, b = math.expm1(hh) / hh - 1, 1, []
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    if not corrector:
        if order <= 2:
            return [0.5] * (order - 1), b_h
        rks, b = rks[:-1], b[:-1]
    elif order == 1:
        return [0.5], b_h
    r = torch.tensor([[rk ** (j - 1) for rk in rks] for j in range(1, len(rks) + 1)], dtype=torch.float64)
    return torch.linalg.solve(r, torch.tensor(b[: len(rks)], dtype=torch.float64)).tolist(), b_h


def _update(
    x: Tensor, sigma: float, sigma_next: float, hist: list[tuple[float, Tensor]], order: int, variant: str,
    model_next: Tensor | None = None,
) -> Tensor:
    """One UniP-p step from sigma to sigma_next, or with ``model_next`` (D at the predicted point)
    the UniC-p correction of that step. ``hist`` holds (lambda, D) pairs, the newest last."""
    lam, m0 = hist[-1]
    h = math.log(sigma / sigma_next)  # lambda_next - lambda with lambda = -log sigma
    n_old = order - 1
    rks = [(hist[-1 - k][0] - lam) / h for k in range(1, n_old + 1)]
    d1s = [(hist[-1 - k][1] - m0) / rk for k, rk in zip(range(1, n_old + 1), rks, strict=True)]
    rhos, b_h = _rhos(rks, h, variant, corrector=model_next is not None)
    res = sum((rho * d for rho, d in zip(rhos, d1s, strict=False)), torch.zeros_like(x))
    if model_next is not None:
        res = res + rhos[-1] * (model_next - m0)
    return (sigma_next / sigma) * x - math.expm1(-h) * m0 - b_h * res


@torch.no_grad()
def sample_unipc(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource,
    cond: Mapping[str, Any] | None = None,
    clip_x0: bool = False,
    order: int = 2,
    variant: str = "bh2",
    callback: StepCallback | None = None,
) -> Tensor:
    """UniPC-p multistep (Zhao et al. 2023, Algorithm 2 with the B(h) predictor UniP and corrector
    UniC; ``variant='bh2'`` is B(h) = e^h - 1, the paper's choice for guided/few-step sampling).

    Each step (1) evaluates D at the predicted point, (2) corrects that point with UniC using the
    new D (which is then reused, not re-evaluated: one network evaluation per step), and
    (3) predicts the next point with UniP. Orders warm up from 1 and drop at the end
    (``lower_order_final``): the step to sigma = 0 is first order and returns the last D.
    """
    check_choice("variant", variant, ("bh1", "bh2"))
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    d_fn = ve.denoise_fn(denoiser, cond, clip_x0)
    x, grid = ve.start(x, sigmas)
    n = len(grid) - 1
    hist: list[tuple[float, Tensor]] = []
    x_prev, last_order = x, 0
    for i in range(n):
        sigma, sigma_next = grid[i], grid[i + 1]
        # 1. evaluate the model at the predicted point
        x0 = d_fn(x, sigma)
        # 2. UniC: correct the point just predicted (skipped before the last step: no effect)
        if i > 0 and sigma_next > 0:
            x = _update(x_prev, grid[i - 1], sigma, hist, last_order, variant, model_next=x0)
        hist = [*hist[-(order - 1):], (-math.log(sigma), x0)] if order > 1 else [(-math.log(sigma), x0)]
        # 3. UniP: predict the next point (first order to sigma = 0: x = D)
        last_order = min(order, n - i, len(hist))
        x_prev = x
        x = x0 if sigma_next == 0 else _update(x, sigma, sigma_next, hist, last_order, variant)
        ve.report(callback, denoiser, i, sigma, x, sigma_next, x0)
    return x
