"""DDIM inversion (Song et al. 2021, sec. 4.3; Dhariwal & Nichol 2021, appendix F): run the
deterministic DDIM ODE step backwards, from an image x_0 up to the noise x_T that DDIM sampling
with the same grid maps back to it.

One DDIM step from t down to s (eq. 12 with eta = 0) is
    x_s = sqrt(alpha_bar_s) x0_hat(x_t) + sqrt(1 - alpha_bar_s) eps_hat(x_t),
with (x0_hat, eps_hat) the denoiser's prediction at x_t, so x_t = sqrt(alpha_bar_t) x0_hat +
sqrt(1 - alpha_bar_t) eps_hat. Given eps_hat, x0_hat = (x_s - sqrt(1 - alpha_bar_s) eps_hat) /
sqrt(alpha_bar_s), hence the inverse step
    x_t = sqrt(alpha_bar_t) (x_s - sqrt(1 - alpha_bar_s) eps) / sqrt(alpha_bar_s) + sqrt(1 - alpha_bar_t) eps.
It needs eps_hat(x_t) at the unknown x_t; plain DDIM inversion uses the prediction at (x_s, t)
instead, which is exact only as the steps shrink (first order in the step size).

``fixed-point`` (Pan et al. 2023, "Effective Real Image Editing with Accelerated Iterative
Diffusion Inversion", eq. 6; Garibi et al. 2024, ReNoise) solves the implicit equation: starting
from the plain estimate, it re-evaluates eps_hat at the current x_t and recomputes x_t,
``iterations`` times per step (one network evaluation each). At its fixed point the forward DDIM
step maps x_t exactly back to x_s, so reconstruction no longer depends on the step size.

The grid is the one DDIM sampling uses (:func:`difflab.schedules.timesteps`), walked upwards:
-1 (the clean image) -> t_N -> ... -> t_1 (e.g. 999 with ``trailing``), the inverse of each of
sampling's steps and no other (the off-by-one of diffusers#10695 / PR #3436 is tested on the
Gaussian toy against the exact probability-flow inverse). Inversion is only as good as the model
is consistent: with classifier-free guidance far above 1 the guided eps changes too fast along the
path for plain inversion (prompt-to-prompt#27); the run-level default is guidance 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from difflab.config import check_choice
from difflab.diffusion import Denoiser, Model
from difflab.samplers.base import alpha_bar, clip_and_refit
from difflab.sampling import sample
from difflab.schedules import NoiseSchedule, timesteps

INVERSIONS: tuple[str, ...] = ("ddim", "fixed-point")
#: The fixed-point step solves for x0_hat when alpha_bar_s is below this (sigma_s > 1), else for
#: eps_hat. Both give the same fixed point; at high noise eps_hat(x) ~ x makes the eps map contract
#: by only ~ 1 - sqrt(alpha_bar_t / alpha_bar_s) per iteration, while the x0 map contracts fast
#: there (on the Gaussian toy: factor 0.95 vs 0.05 at the top step of 10).
X0_FORM_BELOW = 0.5


@torch.no_grad()
def ddim_invert(
    model: Model,
    image: Tensor,
    *,
    schedule: NoiseSchedule,
    prediction: str = "eps",
    steps: int = 50,
    spacing: str = "trailing",
    method: str = "fixed-point",
    iterations: int = 3,
    clip_x0: bool = False,
    cond: Mapping[str, Any] | None = None,
    return_nfe: bool = False,
) -> Tensor | tuple[Tensor, int]:
    """The noise x_T that deterministic DDIM (``sample(..., sampler="ddim", eta=0)`` with the same
    ``steps``, ``spacing`` and ``clip_x0``) maps to ``image`` [B, C, H, W]. ``method`` is
    ``"ddim"`` (plain inversion) or ``"fixed-point"`` with ``iterations`` refinements per step."""
    check_choice("method", method, INVERSIONS)
    if method == "fixed-point" and iterations < 1:
        raise ValueError(f"fixed-point inversion needs iterations >= 1, got {iterations}")
    denoiser = Denoiser(model, schedule, prediction)
    x = image
    s = -1
    for t in reversed(timesteps(schedule.T, steps, spacing).tolist()):
        ab_t, ab_s = alpha_bar(denoiser, t), alpha_bar(denoiser, s)
        a_t, b_t = ab_t.sqrt().to(x.dtype), (1 - ab_t).sqrt().to(x.dtype)
        a_s, b_s = ab_s.sqrt().to(x.dtype), (1 - ab_s).sqrt().to(x.dtype)

        def up_eps(eps: Tensor, x_s: Tensor = x, a_t: Tensor = a_t, b_t: Tensor = b_t, a_s: Tensor = a_s,
                   b_s: Tensor = b_s) -> Tensor:
            return a_t * (x_s - b_s * eps) / a_s + b_t * eps

        def up_x0(x0: Tensor, x_s: Tensor = x, a_t: Tensor = a_t, b_t: Tensor = b_t, a_s: Tensor = a_s,
                  b_s: Tensor = b_s) -> Tensor:
            return b_t * (x_s - a_s * x0) / b_s + a_t * x0

        # 1. plain DDIM inversion: the prediction at (x_s, t) stands in for the one at x_t
        x_t = up_eps(denoiser(x, t, cond).eps)
        # 2. fixed-point refinements: the prediction re-evaluated where the step lands, as sampling
        #    will; solved for eps at low noise and for x0 at high noise, whichever map contracts
        use_x0 = float(ab_s) < X0_FORM_BELOW
        for _ in range(iterations if method == "fixed-point" else 0):
            d = clip_and_refit(denoiser(x_t, t, cond), x_t, ab_t, clip_x0)
            x_t = up_x0(d.x0) if use_x0 else up_eps(d.eps)
        x, s = x_t, t
    return (x, denoiser.nfe) if return_nfe else x


def reconstruct(model: Model, noise: Tensor, *, schedule: NoiseSchedule, prediction: str = "eps",
                steps: int = 50, spacing: str = "trailing", clip_x0: bool = False,
                cond: Mapping[str, Any] | None = None) -> Tensor:
    """Deterministic DDIM from ``noise`` with the grid :func:`ddim_invert` walked up."""
    return sample(model, noise, schedule=schedule, sampler="ddim", steps=steps, eta=0.0, spacing=spacing,
                  prediction=prediction, clip_x0=clip_x0, cond=cond)


@dataclass(frozen=True)
class Inversion:
    """An inverted batch: the noise, its DDIM reconstruction, the settings that reconstruct it
    (``difflab sample --from-noise`` reads them from the JSON beside the .npy) and the error."""

    noise: Tensor
    reconstruction: Tensor
    settings: dict[str, Any]
    nfe: int

    def rmse(self, image: Tensor) -> float:
        """Root mean square error of the reconstruction on the [-1, 1] scale."""
        return float((self.reconstruction - image).double().pow(2).mean().sqrt())

    def max_levels(self, image: Tensor) -> int:
        """The largest difference in 8-bit grey levels after quantisation."""
        from difflab.viz import to_uint8

        a, b = to_uint8(self.reconstruction).astype(int), to_uint8(image).astype(int)
        return int(abs(a - b).max())


def invert_run(pipe: Any, image: Tensor, *, steps: int = 50, spacing: str = "trailing",
               method: str = "fixed-point", iterations: int = 3,
               class_labels: Sequence[int] | Tensor | None = None,
               prompts: str | Sequence[str] | None = None, guidance: float | Any = 1.0,
               clip_x0: bool = False) -> Inversion:
    """Invert images [B, C, H, W] with a trained run and reconstruct them with DDIM. Guidance
    defaults to 1 (the conditional model, no extrapolation) where the run is conditional; the
    x_0 clipping defaults to off, since clipping is not invertible where it acts. A latent run
    inverts the image's latent (the posterior mean): the noise is a latent, the reconstruction
    is decoded, and its error includes the autoencoder's."""
    image = pipe.check_images(image, None, "image")
    n = image.shape[0]
    model, cond = pipe.conditioned(n, class_labels=class_labels, prompts=prompts, guidance=guidance)
    x0 = pipe.encode(image.to(pipe.device))
    common = {"schedule": pipe.schedule, "prediction": pipe.config.prediction, "steps": steps,
              "spacing": spacing, "clip_x0": clip_x0, "cond": cond}
    out = ddim_invert(model, x0, method=method, iterations=iterations, return_nfe=True, **common)
    assert isinstance(out, tuple)
    noise, nfe = out
    recon = pipe.decode(reconstruct(model, noise, **common)).float().clamp(-1, 1).cpu()
    scale = getattr(guidance, "scale", guidance)
    settings = {"sampler": "ddim", "eta": 0.0, "steps": steps, "spacing": spacing, "clip": clip_x0,
                "method": method, "iterations": iterations if method == "fixed-point" else 0,
                "class_labels": None if class_labels is None else torch.as_tensor(class_labels).tolist(),
                "guidance": None if scale is None else float(scale)}
    return Inversion(noise.float().cpu(), recon, settings, nfe)
