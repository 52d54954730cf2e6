"""Training objectives (see :mod:`difflab.train.objectives.base`): a registry by name."""

from difflab.train.objectives.base import Batch, Objective
from difflab.train.objectives.denoising import DenoisingObjective, draw_per_sample, loss_weights
from difflab.train.objectives.reconstruction import ReconstructionObjective

OBJECTIVES = {DenoisingObjective.name: DenoisingObjective, ReconstructionObjective.name: ReconstructionObjective}

__all__ = ["Batch", "Objective", "DenoisingObjective", "ReconstructionObjective", "OBJECTIVES", "draw_per_sample", "loss_weights"]
