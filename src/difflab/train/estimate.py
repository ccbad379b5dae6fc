"""How long a run will take on this machine, measured before it starts.

The notes' programs are sized for GPUs; on a CPU some take hours. ``estimate`` times a few
optimizer steps of the run's own :class:`~difflab.train.loop.Trainer` (network, loss, optimizer,
EMA: exactly what training runs) so ``difflab train`` can say what a run will cost before it costs
it. Small networks are timed at the run's batch size; when a step of 8 images already takes long,
at 8 images, scaled linearly to the batch.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from difflab.data import ImageDataset
from difflab.device import resolve_device
from difflab.run_config import TrainConfig
from difflab.train.budget import format_duration
from difflab.train.loop import Trainer, clock, prepare_data

_PROBE_BATCH = 8
_FULL_BATCH_S = 2.0  # time the full batch when its step should take less than this


@dataclass(frozen=True)
class Estimate:
    seconds_per_step: float
    steps: int
    steps_per_epoch: float
    parameters: int
    probe_batch: int
    batch_size: int
    time_budget: float | None = None

    @property
    def seconds(self) -> float:
        return self.seconds_per_step * self.steps

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.seconds_per_step

    def describe(self) -> str:
        epoch = self.seconds_per_step * self.steps_per_epoch
        how = ("measured" if self.probe_batch == self.batch_size
               else f"measured on a batch of {self.probe_batch}, scaled")
        speed = (f"{self.parameters:,} parameters; about {format_duration(self.seconds_per_step)} per "
                 f"step of {self.batch_size} here ({self.images_per_s:.0f} images/s, {how}), "
                 f"{self.steps_per_epoch:.1f} steps per epoch ({format_duration(epoch)})")
        if self.time_budget is not None:
            steps = int(self.time_budget / self.seconds_per_step)
            return (f"training for {format_duration(self.time_budget)} (time budget): about {steps:,} steps; "
                    f"{speed}; the step count is fitted after the warm-up")
        return f"training {self.steps:,} steps: about {format_duration(self.seconds)} here; {speed}"


def estimate(cfg: TrainConfig, repeats: int = 2) -> Estimate:
    """Time ``repeats`` training steps of ``cfg`` (after one untimed warm-up step)."""
    cfg, data = prepare_data(cfg, log=lambda _: None)
    if cfg.latent:  # a step costs the same on any latents: time it without encoding the data
        from difflab.latent.cache import placeholder

        net = cfg.net
        data = placeholder(data, (net.in_channels, net.image_size, net.image_size))
    device = resolve_device(cfg.device)
    probe = min(_PROBE_BATCH, cfg.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        per_step, params = _time_steps(cfg.replace(batch_size=probe), data, Path(tmp), device, repeats)
        per_step *= cfg.batch_size / probe
        if probe < cfg.batch_size and per_step < _FULL_BATCH_S:
            probe = cfg.batch_size
            per_step, params = _time_steps(cfg, data, Path(tmp), device, repeats)
    per_epoch = len(data) / cfg.batch_size
    return Estimate(per_step, cfg.steps, per_epoch, params, probe, cfg.batch_size, cfg.time_budget)


def _time_steps(cfg: TrainConfig, data: ImageDataset, out: Path, device: torch.device, repeats: int
                ) -> tuple[float, int]:
    """Median seconds of a training step after one untimed one, and the network's parameters."""
    from difflab.nets import param_count

    trainer = Trainer(cfg.replace(eval_every=0), data, out, device, lambda _: None)
    times = []
    for _ in range(repeats + 1):
        start = clock()
        trainer.train_step()
        times.append(clock() - start)
    return statistics.median(times[1:]), param_count(trainer.net)
