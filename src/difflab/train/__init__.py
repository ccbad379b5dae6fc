"""Training: the loop, EMA, atomic checkpoints and the run config."""

from difflab.train.config import PRESETS, TrainConfig, preset_config
from difflab.train.loop import TrainingError, TrainResult, train

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "TrainingError", "preset_config", "train"]
