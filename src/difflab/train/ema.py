"""Exponential moving average of the weights, with warm-up."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """theta_ema <- d theta_ema + (1 - d) theta, with d = min(decay, (1 + n) / (10 + n)) after n
    updates (the warm-up of TensorFlow's ExponentialMovingAverage ``num_updates``), so early
    averages are not dominated by the random initial weights."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_params = [p for p in self.model.parameters()]
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, object]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
        self.updates = int(state["updates"])  # type: ignore[arg-type]
