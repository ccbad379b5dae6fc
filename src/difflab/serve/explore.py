"""The forward process for learners: q(x_t | x_0) for one image at one t, what the model makes
of it, and the schedule as curves.

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps            (Ho et al. 2020, eq. 4)
    log SNR(t) = log(alpha_bar_t / (1 - alpha_bar_t))                   (Kingma et al. 2021)

The network's output at (x_t, t) becomes (x0_hat, eps_hat) through the run's prediction type
(:func:`difflab.diffusion.to_x0_eps`); a latent run does all of this on the image's latent and
shows x_t and x0_hat decoded.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from difflab.diffusion import Denoiser, q_sample
from difflab.noise import generators_from_seeds
from difflab.serve.images import data_url, png_bytes
from difflab.serve.models import ServedModel

DATA_IMAGES = 32  # images of a run's data set offered on the page, evenly spaced through it


def schedule_curves(m: ServedModel, points: int = 200) -> dict[str, Any]:
    """alpha_bar_t and log SNR(t) at about ``points`` timesteps (always including 0 and T - 1)."""
    ab = m.pipe.schedule.alphas_cumprod.double()
    T = len(ab)
    ts = sorted({round(i * (T - 1) / max(1, points - 1)) for i in range(points)})
    a = ab[ts]
    snr = torch.log(a) - torch.log1p(-a)
    return {"T": T, "t": ts, "alpha_bar": [float(v) for v in a],
            "log_snr": [float(v) if math.isfinite(v) else None for v in snr.tolist()]}


def data_indices(size: int) -> Tensor:
    """The indices of the offered images in a data set of ``size``: evenly spaced, first and last."""
    return torch.linspace(0, size - 1, min(DATA_IMAGES, size)).round().long()


def data_images(m: ServedModel) -> Tensor | None:
    """``DATA_IMAGES`` images evenly spaced through the run's data set (sorted sets show every
    class), [N, C, H, W] in [-1, 1], read once; None when the run's data cannot be read here (then
    the model's own samples stand in)."""
    from difflab.data import load_dataset

    if "data" not in m.cache:
        try:
            data = load_dataset(m.pipe.config.data)
            x, _ = data.batch(data_indices(len(data)))
            m.cache["data"] = x.float() if tuple(x.shape[1:]) == m.pipe.image_shape else None
        except (ValueError, OSError):
            m.cache["data"] = None
    return m.cache["data"]


def source_image(m: ServedModel, index: int) -> tuple[Tensor, str]:
    """Data image ``index`` [1, C, H, W], or (no data here) the model's sample of seed ``index``."""
    data = data_images(m)
    if data is not None:
        if index >= len(data):
            raise ValueError(f"pick a data image 0..{len(data) - 1}, got {index}")
        return data[index : index + 1], "data"
    return m.pipe.sample(1, seed=index, steps=min(20, m.pipe.config.sample_steps)), "sample"


def show(x: Tensor) -> str:
    """A data URL of one image (or of a latent's first channels, enlarged to be seen)."""
    x = x[0].detach().float().cpu()
    if x.shape[0] not in (1, 3):
        x = x[:1]
    if x.shape[-1] < 64:
        x = F.interpolate(x[None], scale_factor=max(1, 64 // x.shape[-1]), mode="nearest")[0]
    return data_url(png_bytes(x.clamp(-1, 1)))


@torch.no_grad()
def forward(m: ServedModel, index: int, t: int, seed: int) -> dict[str, Any]:
    """x_0, the noise eps, x_t ~ q(x_t | x_0) and the model's eps_hat and x0_hat at t."""
    pipe = m.pipe
    T = pipe.schedule.T
    if not 0 <= t < T:
        raise ValueError(f"t must lie in 0..{T - 1} for model {m.name}, got {t}")
    if pipe.config.objective == "corrupt":
        raise ValueError(f"model {m.name} was trained with --objective corrupt, not the forward diffusion")
    x0, source = source_image(m, index)
    z0 = pipe.encode(x0)
    (gen,) = generators_from_seeds([seed])
    eps = torch.randn(z0.shape[1:], generator=gen)[None].to(z0)
    tt = torch.tensor([t])
    x_t = q_sample(pipe.schedule, z0, tt, eps)
    extra: dict[str, Any] = {}
    if pipe.is_lowres:
        extra["lowres"] = pipe.lowres_condition.shrink(x0)
    model, cond = pipe.conditioned(1, **extra)
    out = Denoiser(model, pipe.schedule, pipe.config.prediction)(x_t.to(pipe.device), tt, cond)
    ab = float(pipe.schedule.alphas_cumprod[t])
    decode = pipe.decode
    return {
        "model": m.name, "t": t, "T": T, "index": index, "seed": seed, "source": source,
        "alpha_bar": ab, "log_snr": math.log(ab) - math.log1p(-ab) if 0 < ab < 1 else None,
        "noise_mse": float(((out.eps.float().cpu() - eps.cpu()) ** 2).mean()),
        "x0": show(x0), "noise": show(eps / 3), "xt": show(decode(x_t)),
        "eps_hat": show(out.eps / 3), "x0_hat": show(decode(out.x0.clamp(-1, 1)) if pipe.latent is None
                                                    else decode(out.x0)),
    }
