"""Training: the loop, EMA and resumable checkpoints (files are written through :mod:`difflab.io`;
the run config and presets live below, in :mod:`difflab.run_config` and :mod:`difflab.presets`)."""

from difflab.presets import PRESETS, preset_config
from difflab.run_config import TrainConfig
from difflab.train.loop import TrainingError, TrainResult, train

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "TrainingError", "preset_config", "train"]
