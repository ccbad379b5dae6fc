"""Training: the loop, EMA, atomic checkpoints and the run config."""

from difflab.presets import PRESETS, preset_config
from difflab.run_config import TrainConfig
from difflab.train.loop import TrainingError, TrainResult, train

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "TrainingError", "preset_config", "train"]
