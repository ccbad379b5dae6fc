"""A trained model ready to sample: ``pipe = difflab.load(run); pipe.sample(n=16, seed=0)``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difflab.device import resolve_device
from difflab.io import CheckpointError, load_weights
from difflab.noise import generators_from_seeds
from difflab.run_config import TrainConfig
from difflab.samplers.base import StepCallback
from difflab.sampling import sample


class Pipeline:
    """A network, its training config and its schedule; samples images in [-1, 1]."""

    def __init__(self, net: nn.Module, config: TrainConfig, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.config = config
        self.schedule = config.make_schedule()

    @classmethod
    def load(cls, run: str | Path, device: str = "auto") -> Pipeline:
        """Load ``run/config.json`` and the EMA weights ``run/model.safetensors``."""
        from difflab.nets import build_net

        run = Path(run)
        cfg_path = run / "config.json"
        if not cfg_path.is_file():
            raise CheckpointError(f"{run} has no config.json; point at a folder written by `difflab train`")
        try:
            config = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{cfg_path} is not a valid difflab config: {err}") from err
        net = build_net(config.net)
        state = load_weights(run / "model.safetensors")
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise CheckpointError(
                f"{run / 'model.safetensors'} does not fit the network in config.json; "
                "were the files copied from different runs?"
            ) from err
        return cls(net, config, resolve_device(device))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        data = self.config.data
        net = self.net
        size = data.image_size or getattr(net, "image_size", None) or 28
        return (int(getattr(net, "in_channels", 1)), int(size), int(size))

    @torch.no_grad()
    def sample(
        self,
        n: int = 16,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        seed: int = 0,
        batch_size: int = 256,
        clip_x0: bool = True,
        variance: str = "beta",
        spacing: str = "trailing",
        sigmas: str | None = None,
        discrete: bool | None = None,
        class_labels: Sequence[int] | Tensor | None = None,
        callback: StepCallback | None = None,
        **options: Any,
    ) -> Tensor:
        """``n`` images in [-1, 1] on the CPU. Image i comes from seed ``seed + i`` whatever
        ``batch_size`` is, so the same seed gives the same bytes. ``class_labels`` (one per image)
        conditions a class-conditional model. ``sampler``, ``sigmas`` and ``options`` (s_churn,
        order, ...) are those of :func:`difflab.sample`; ``steps`` defaults to the config's
        ``sample_steps`` (T for ddpm). ``discrete`` defaults to True for MyUNet, whose time
        embedding is a table of integer timesteps."""
        if n < 1:
            raise ValueError(f"n must be a positive number of images, got {n}")
        if self.config.objective == "corrupt":
            return self._sample_mixing(n, sampler, steps, seed, batch_size, callback)
        sampler = sampler or self.config.sample_sampler
        if sampler == "mix":
            raise ValueError(
                "--sampler mix is for runs trained with --objective corrupt; pick a diffusion sampler"
            )
        steps = steps or (self.schedule.T if sampler == "ddpm" else self.config.sample_steps)
        if discrete is None:
            from difflab.nets import MyUNet

            discrete = isinstance(self.net, MyUNet)
        labels = None if class_labels is None else torch.as_tensor(class_labels, dtype=torch.long)
        if labels is not None and labels.shape != (n,):
            raise ValueError(f"give one class label per image: {n} images, {tuple(labels.shape)} labels")
        out = []
        for start in range(0, n, batch_size):
            idx = range(start, min(n, start + batch_size))
            gens = generators_from_seeds([seed + i for i in idx])
            x_T = torch.stack([torch.randn(self.image_shape, generator=g) for g in gens]).to(self.device)
            cond = None if labels is None else {"class_labels": labels[idx.start : idx.stop].to(self.device)}
            x = sample(
                self.net,
                x_T,
                schedule=self.schedule,
                sampler=sampler,
                steps=steps,
                prediction=self.config.prediction,
                spacing=spacing,
                sigmas=sigmas,
                discrete=discrete,
                eta=eta,
                variance=variance,
                clip_x0=clip_x0,
                generator=gens,
                cond=cond,
                callback=callback,
                **options,
            )
            out.append(x.float().clamp(-1, 1).cpu())
        return torch.cat(out)

    def _sample_mixing(self, n: int, sampler: str | None, steps: int | None, seed: int, batch_size: int,
                       callback: StepCallback | None) -> Tensor:
        """Seed 003's first model: start from uniform noise and mix in the predicted x_0."""
        from difflab.nets import mixing_sample

        if sampler not in (None, "mix"):
            raise ValueError("this run was trained with --objective corrupt (seed 003's first model); "
                             "sample it with --sampler mix")
        steps = steps or self.config.sample_steps
        out = []
        for start in range(0, n, batch_size):
            gens = generators_from_seeds(range(seed + start, seed + min(n, start + batch_size)))
            x = torch.stack([torch.rand(self.image_shape, generator=g) for g in gens]).to(self.device)
            step_fn = None if callback is None else (
                lambda i, x_, p: callback(i, steps - 1 - i, x_ * 2 - 1, p * 2 - 1))
            x = mixing_sample(self.net, x, steps, step_fn)  # on the notes' [0, 1] range
            out.append((x.float() * 2 - 1).clamp(-1, 1).cpu())
        return torch.cat(out)

    def sample_pil(self, n: int = 16, **kwargs: Any) -> list[Any]:
        """Like :meth:`sample`, as a list of PIL images."""
        from PIL import Image

        from difflab.viz import to_uint8

        arrays = to_uint8(self.sample(n, **kwargs))
        return [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in arrays]


def load(run: str | Path, device: str = "auto") -> Pipeline:
    """Load a trained run folder as a :class:`Pipeline`."""
    return Pipeline.load(run, device)
