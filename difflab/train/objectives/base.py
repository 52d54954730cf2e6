"""What a training step minimises: the interface the trainer's loop calls.

The loop only reads a batch and calls ``objective.loss(model, batch)``; the objective owns every
formula (parameterization, weighting, timestep sampling, teacher steps), so a new training method
(consistency distillation, reflow) is a new class here, not a branch in the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """One micro-batch: clean samples in model space and their raw conditions."""

    x0: torch.Tensor            # [B, C, H, W] on the training device
    conditions: list            # captions or labels, one per sample
    positions: list[int]        # global sample positions: every random draw is seeded by them
    noise: torch.Tensor | None = None   # reflow: the noise each sample is coupled with (else drawn)


class Objective:
    """Base class: ``loss(model, batch) -> scalar tensor``."""

    name = ""

    def loss(self, model, batch: Batch) -> torch.Tensor:
        raise NotImplementedError
