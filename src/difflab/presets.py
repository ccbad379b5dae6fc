"""The study notes' programs as presets of :class:`~difflab.run_config.TrainConfig`."""

from __future__ import annotations

from typing import Any

from difflab.config import check_choice
from difflab.run_config import TrainConfig

PRESETS: tuple[str, ...] = ("seed000", "seed003", "seed004")


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    """The recipe of one study note, on MNIST unless ``data`` is overridden.

    - ``seed000``: MyUNet, 200 linear steps (1e-4..0.02), MSE on eps, Adam lr 1e-3, batch 128.
    - ``seed003``: diffusers UNet2DModel, squaredcos_cap_v2 (cosine) with 1000 steps, AdamW lr 4e-4.
    - ``seed004``: SimpleUnet, 300 linear steps, L1 loss on eps, Adam lr 1e-3.
    All three predict eps with an unweighted loss. The notes use no EMA, warm-up, LR decay or
    gradient clipping; the presets keep them off.
    """
    check_choice("preset", name, PRESETS)
    plain = {"ema_decay": 0.0, "warmup_steps": 1, "lr_schedule": "constant", "grad_clip": 0.0,
             "prediction": "eps", "weighting": "none"}
    recipes: dict[str, dict[str, Any]] = {
        "seed000": {
            "net_kind": "myunet",
            "schedule": "linear",
            "T": 200,
            "optimizer": "adam",
            "lr": 1e-3,
            "batch_size": 128,
        },
        "seed003": {
            "net_kind": "diffusers-unet",
            "schedule": "cosine",
            "T": 1000,
            "optimizer": "adamw",
            "lr": 4e-4,
            "weight_decay": 0.01,
            "batch_size": 128,
        },
        "seed004": {
            "net_kind": "simple-unet",
            "schedule": "linear",
            "T": 300,
            "loss": "l1",
            "optimizer": "adam",
            "lr": 1e-3,
            "batch_size": 128,
        },
    }
    return TrainConfig(**{**plain, **recipes[name], "preset": name, **overrides})
