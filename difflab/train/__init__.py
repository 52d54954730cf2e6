"""Training: ``train(config, out)`` on Accelerate, with presets, checkpoints that resume exactly, EMA."""

from difflab.train.config import PRESETS, TrainConfig, build_config, preset
from difflab.train.trainer import Trainer, TrainingStopped, train

__all__ = ["PRESETS", "TrainConfig", "Trainer", "TrainingStopped", "build_config", "preset", "train"]
