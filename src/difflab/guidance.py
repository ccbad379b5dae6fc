"""Classifier-free guidance as a wrapper around a network (Ho & Salimans 2022).

``CFGModel(model, ...)`` is itself a network in difflab's contract, ``model(x_t, t, **cond)``, so
every sampler, the callback and the NFE count work with it unchanged:

    out = out_u + w (out_c - out_u)                                         (Ho & Salimans, eq. 6)

with ``out_c = model(x_t, t, **cond)`` and ``out_u = model(x_t, t, **uncond)``. The combination is
taken on the network's own output (eps, x0 or v); for a fixed x_t and t every conversion between
them is affine with the same coefficients for both branches, so guiding the output is guiding the
denoiser D(x_t) = x0. ``w = 0`` is exactly the unconditional model and ``w = 1`` exactly the
conditional one (only that branch runs).

Options:
- ``rescale`` (phi; Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
  Flawed", sec. 3.4 and Algorithm 2): out <- phi * out * std(out_c) / std(out) + (1 - phi) * out,
  std per sample over C, H, W, on the network's output as diffusers' ``rescale_noise_cfg`` does.
- ``interval`` (sigma_lo, sigma_hi): guide only where the step's noise level sigma lies in the
  interval and use the conditional model elsewhere (Kynkaanniemi et al. 2024, "Applying Guidance
  in a Limited Interval Improves Sample and Distribution Quality").
- ``batched``: both branches in one network call of 2B (default), or two calls of B when memory
  is tight; the results are the same.

The null condition ``uncond`` is the one the network was trained with (the null class, or the
encoded empty prompt), or a negative prompt's; conditioning tensors of both branches are
concatenated consistently, token sequences of different lengths padded with all-zero tokens,
which difflab's cross-attention masks out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from difflab.diffusion import discrete_sigmas, t_to_sigma
from difflab.schedules import NoiseSchedule


@dataclass(frozen=True)
class Guidance:
    """How to guide: the scale ``w``, the rescale ``phi``, the sigma ``interval`` and batching."""

    scale: float = 1.0
    rescale: float = 0.0
    interval: tuple[float, float] | None = None
    batched: bool = True

    def __post_init__(self) -> None:
        if not self.scale == self.scale or self.scale < 0:
            raise ValueError(f"guidance scale must be >= 0 (0 = unconditional, 1 = conditional), "
                             f"got {self.scale}")
        if not 0 <= self.rescale <= 1:
            raise ValueError(f"guidance rescale phi must lie in [0, 1], got {self.rescale}")
        if self.interval is not None:
            lo, hi = self.interval
            if not 0 <= lo < hi:
                raise ValueError(f"guidance interval must be (sigma_lo, sigma_hi) with 0 <= lo < hi, "
                                 f"got {self.interval}")


def pad_tokens(a: Tensor, length: int) -> Tensor:
    """Pad a token sequence [B, L, D] with all-zero (masked) tokens to ``length``."""
    if a.shape[1] == length:
        return a
    return torch.cat([a, a.new_zeros(a.shape[0], length - a.shape[1], a.shape[2])], dim=1)


def concat_cond(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Both branches' conditioning in one batch of 2B: every tensor concatenated along the batch,
    token sequences padded to the longer length first."""
    if set(a) != set(b):
        raise ValueError(f"both guidance branches need the same conditioning keys, got {sorted(a)} "
                         f"and {sorted(b)}")
    out: dict[str, Any] = {}
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, Tensor) and x.ndim == 3:
            length = max(x.shape[1], y.shape[1])
            x, y = pad_tokens(x, length), pad_tokens(y, length)
        out[key] = torch.cat([x, y])
    return out


def rescale_guided(guided: Tensor, cond_out: Tensor, phi: float) -> Tensor:
    """Lin et al. 2024, Algorithm 2: match the per-sample std of the conditional output."""
    if phi == 0:
        return guided
    dims = tuple(range(1, guided.ndim))
    factor = cond_out.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-12)
    return phi * guided * factor + (1 - phi) * guided


class CFGModel:
    """A network guided towards ``cond`` and away from ``uncond`` (see the module docs).

    Called as ``model(x_t, t, **cond)`` by the samplers; ``uncond`` holds the null (or negative)
    conditioning for the same batch. ``schedule`` is needed only for ``guidance.interval``.
    ``nfe_per_call`` tells :class:`~difflab.Denoiser` how many network evaluations per sample a
    call costs (2 when both branches run, 1 when only one does), so NFE counts stay honest."""

    def __init__(self, model: Callable[..., Tensor], guidance: Guidance, uncond: Mapping[str, Any],
                 schedule: NoiseSchedule | None = None) -> None:
        if guidance.interval is not None and schedule is None:
            raise ValueError("a guidance interval needs the schedule to know each step's sigma")
        self.model = model
        self.guidance = guidance
        self.uncond = dict(uncond)
        self.log_sigmas = None if schedule is None else discrete_sigmas(schedule).log()
        self.nfe_per_call = 2

    def _active(self, t: Tensor) -> bool:
        """Whether this step's noise level lies in the guidance interval."""
        if self.guidance.interval is None or self.log_sigmas is None:
            return True
        lo, hi = self.guidance.interval
        sigma = float(t_to_sigma(self.log_sigmas, t.flatten()[:1].cpu())[0])
        return lo <= sigma <= hi

    def __call__(self, x_t: Tensor, t: Tensor, **cond: Any) -> Tensor:
        w = self.guidance.scale
        active = self._active(t)
        if w == 1 or not active:
            self.nfe_per_call = 1
            return self.model(x_t, t, **cond)
        if w == 0:
            self.nfe_per_call = 1
            return self.model(x_t, t, **self.uncond)
        self.nfe_per_call = 2
        if self.guidance.batched:
            both = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), **concat_cond(cond, self.uncond))
            out_c, out_u = both.chunk(2)
        else:
            out_c = self.model(x_t, t, **cond)
            out_u = self.model(x_t, t, **self.uncond)
        guided = out_u + w * (out_c - out_u)
        return rescale_guided(guided, out_c, self.guidance.rescale)
