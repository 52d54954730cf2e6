"""Starting a run from a package (``init_from``): its weights copied into the new network, and its
training record kept as the new package's ``training.parent``."""

from __future__ import annotations

import json
from pathlib import Path


def init_folder(name: str | None) -> Path | None:
    """The folder ``init_from`` names: a path, or a bundled model's name (``shapes``) where no such path exists."""
    from difflab.settings import BUNDLED_MODELS
    if not name:
        return None
    return BUNDLED_MODELS[name] if name in BUNDLED_MODELS and not Path(name).exists() else Path(name)


def warm_start(model, folder) -> tuple[str, dict | None]:
    """Copy the weights of the package in ``folder`` into ``model``.

    Returns a line for the log and the package's own training record, which the new package keeps
    as ``training.parent``, so a model grown in stages carries its whole lineage.

    Every tensor of the package must exist in ``model`` with the same shape. ``model`` may have
    more: those must start at zero (a zero-initialised output layer, attention positions), or lie in
    blocks the model declares the identity at initialisation (``model.identity_at_init(name)``: a
    video UNet's temporal blocks), so the grown network computes what the package computed until
    training moves the new parts.
    """
    from difflab.models.package import load_package

    try:
        package = load_package(folder)
    except FileNotFoundError as error:
        raise ValueError(f"init_from: {error}") from None
    source, target = package.model.state_dict(), model.state_dict()
    extra = sorted(set(source) - set(target))
    if extra:
        raise ValueError(f"init_from {folder}: the package has tensors this model lacks: {extra[:6]}; "
                         "the architectures differ")
    for name, tensor in source.items():
        if tensor.shape != target[name].shape:
            raise ValueError(f"init_from {folder}: tensor {name!r} has shape {list(tensor.shape)}, this model "
                             f"expects {list(target[name].shape)}")
    new = sorted(set(target) - set(source))
    exempt = getattr(model, "identity_at_init", lambda name: False)     # e.g. a video UNet's temporal blocks
    nonzero = [name for name in new if target[name].is_floating_point() and target[name].abs().max() > 0
               and not exempt(name)]
    if nonzero:
        raise ValueError(f"init_from {folder}: this model's {nonzero[:6]} are missing from the package and do "
                         "not start at zero, so the grown model would not compute what the package computed")
    model.load_state_dict({**target, **source})
    line = f"initialised from {folder}: {len(source)} tensors copied, {len(new)} new ones that start as the identity"
    return line, package.metadata.get("training")


def training_record(folder) -> dict | None:
    """The ``training`` section of a package's config.json, or None where it cannot be read."""
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("training")
    except (OSError, ValueError, AttributeError):
        return None
