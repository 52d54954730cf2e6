"""Training objectives (see :mod:`difflab.train.objectives.base`): a registry by name."""

from difflab.train.objectives.base import Batch, Objective
from difflab.train.objectives.consistency import ConsistencyDistillation
from difflab.train.objectives.denoising import DenoisingObjective, ReflowObjective, draw_per_sample, loss_weights
from difflab.train.objectives.reconstruction import ReconstructionObjective

OBJECTIVES = {cls.name: cls for cls in (DenoisingObjective, ReconstructionObjective, ConsistencyDistillation,
                                        ReflowObjective)}

__all__ = ["Batch", "Objective", "DenoisingObjective", "ReconstructionObjective", "ConsistencyDistillation",
           "ReflowObjective", "OBJECTIVES", "draw_per_sample", "loss_weights"]
