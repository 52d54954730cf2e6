"""Training objectives (see :mod:`difflab.train.objectives.base`): a registry by name."""

from difflab.train.objectives.base import Batch, Objective
from difflab.train.objectives.denoising import DenoisingObjective, draw_per_sample, loss_weights

OBJECTIVES = {DenoisingObjective.name: DenoisingObjective}

__all__ = ["Batch", "Objective", "DenoisingObjective", "OBJECTIVES", "draw_per_sample", "loss_weights"]
