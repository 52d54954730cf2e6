"""The conditioner: prompts, negative prompts and class labels -> the network's keyword arguments.

One object serves the pipeline (prompt and negative prompt) and the trainer (captions with
conditioning dropout), so what a network was trained on and what it is sampled with are made by
the same code. Conditioning is additive, as DiT's embedders are (``c = t_embedder(t) +
y_embedder(y)``): each source turns one kind of input into some keyword arguments, and the
network adds their embeddings. Today's sources are text (tokens, mask, pooled) and class labels;
reference images (IP-Adapter), control images (ControlNet) and size ids (SDXL) are further
:class:`ConditionSource` subclasses passed as ``extra``, each fed by its own keyword in
``Conditioner.__call__``.

Thread-safe: the encoders' caches sit behind one lock, and no call changes process-wide settings
(the web app calls one conditioner from several threads).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch


class ConditionSource:
    """One kind of conditioning input -> keyword arguments of the network."""

    name = ""            # the keyword of Conditioner.__call__ that feeds this source

    def __call__(self, values: list, device) -> dict:
        raise NotImplementedError


class Conditioner:
    """``conditioner(prompts, device) -> {"context": ..., "context_mask": ..., "pooled": ...}``
    (text) or ``{"class_labels": ...}`` (class labels); ``null`` is the empty condition that
    classifier-free guidance and conditioning dropout use.

    Each prompt is encoded on its own (and cached), so its embedding never depends on which prompts
    share its batch: a batch of N equals N single calls. ``batch_encode = True`` encodes a call's new
    prompts together instead (the trainer does so on GPUs, whose kernels are not bitwise reproducible
    anyway, where one-at-a-time encoding would starve the GPU).
    """

    batch_encode = False

    def __init__(self, encoder, extra: Sequence[ConditionSource] = ()):
        self.encoder = encoder
        self.class_labels = hasattr(encoder, "label_index")
        self.null = None if self.class_labels else ""
        self.extra = {source.name: source for source in extra}
        self._lock = threading.RLock()

    @property
    def spec(self) -> dict:
        """The encoder's description, stored in model packages."""
        return self.encoder.spec

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def __repr__(self) -> str:
        return f"Conditioner({type(self.encoder).__name__})"

    def __call__(self, prompts: list, device=None, **inputs) -> dict:
        unknown = sorted(set(inputs) - set(self.extra))
        if unknown:
            raise ValueError(f"this model takes no {', '.join(unknown)} conditioning; it takes "
                             f"{', '.join(['prompts', *self.extra]) }")
        kwargs = self._labels(prompts, device) if self.class_labels else self._text(prompts, device)
        for name, values in inputs.items():
            kwargs.update(self.extra[name](values, device))
        return kwargs

    def dropped(self, conditions: list, drop: list[bool]) -> list:
        """Conditions with the dropped ones replaced by the null condition (for classifier-free guidance)."""
        return [self.null if d else c for c, d in zip(conditions, drop)]

    def _labels(self, labels: list, device) -> dict:
        null = self.encoder.null_label
        indices = [null if label in (None, "") else self.encoder.label_index(label) for label in labels]
        return {"class_labels": torch.tensor(indices, device=device)}

    def _text(self, prompts: list, device) -> dict:
        with self._lock:
            for prompt in () if self.batch_encode else dict.fromkeys(prompts):
                self.encoder.encode([prompt])  # fills the cache one prompt at a time
            tokens, mask, pooled = self.encoder.encode(prompts)
        return {"context": tokens.to(device), "context_mask": mask.to(device), "pooled": pooled.to(device)}
