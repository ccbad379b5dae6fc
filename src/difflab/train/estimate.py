"""How long a run will take on this machine, measured before it starts.

The notes' programs are sized for GPUs; on a CPU some take hours. ``estimate`` times a few
training steps of the run's own network (at a small batch, scaled linearly to the run's batch) so
``difflab train --preset ...`` can say what it is about to cost before it costs it.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch

from difflab.data import load_dataset
from difflab.device import resolve_device
from difflab.losses import diffusion_loss
from difflab.run_config import TrainConfig

_PROBE_BATCH = 8


@dataclass(frozen=True)
class Estimate:
    seconds_per_step: float
    steps: int
    steps_per_epoch: float
    parameters: int

    @property
    def seconds(self) -> float:
        return self.seconds_per_step * self.steps

    def describe(self) -> str:
        epoch = self.seconds_per_step * self.steps_per_epoch
        return (f"{self.parameters:,} parameters; about {_duration(self.seconds_per_step)} per step here, "
                f"{self.steps_per_epoch:.1f} steps per epoch ({_duration(epoch)}), {self.steps:,} steps "
                f"in all: about {_duration(self.seconds)} (measured on a batch of {_PROBE_BATCH}, scaled)")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def estimate(cfg: TrainConfig, repeats: int = 2) -> Estimate:
    """Time ``repeats`` optimizer steps (after one warm-up) of ``cfg``'s network and loss."""
    from difflab.nets import build_net, default_net_config, param_count, required_image_size
    from difflab.nets.basic_unet import corrupt_loss

    data = load_dataset(cfg.data)
    c, h, _ = data.shape
    size = required_image_size(cfg.net_kind, h)
    device = resolve_device(cfg.device)
    net_cfg = cfg.net or default_net_config(cfg.net_kind, in_channels=c, image_size=size, n_steps=cfg.T)
    net = build_net(net_cfg).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    schedule = cfg.make_schedule()
    batch = min(_PROBE_BATCH, cfg.batch_size)
    x0 = torch.rand(batch, c, size, size, device=device) * 2 - 1
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        t = torch.randint(0, cfg.T, (batch,), device=device)
        if cfg.objective == "corrupt":
            loss = corrupt_loss(net, x0, torch.rand(batch, device=device), torch.rand_like(x0), cfg.loss)
        else:
            loss = diffusion_loss(net, x0, t, torch.randn_like(x0), schedule=schedule,
                                  prediction=cfg.prediction, loss=cfg.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    per_step = statistics.median(times[1:]) * cfg.batch_size / batch
    per_epoch = len(data) / cfg.batch_size
    steps = math.ceil(cfg.epochs * per_epoch) if cfg.epochs else cfg.steps
    return Estimate(per_step, steps, per_epoch, param_count(net))
