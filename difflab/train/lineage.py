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


SHARED_MODEL_FIELDS = ("in_channels", "out_channels", "context_dim", "pooled_dim", "num_classes")  # the trainer sets these


def package_fields(folder: Path, header: dict) -> dict:
    """The training fields that rebuild a package's network as it is (from its config.json, no torch):
    the network table, schedule, prediction type, resolution and, for a latent model, its VAE. A LoRA
    (and a distilled student) starts from these, since it adapts that very network."""
    diffusion, schedule = header.get("diffusion", {}), header.get("diffusion", {}).get("schedule", {})
    values = {"model": {"class_name": header.get("class_name", "UNet"),
                        **{k: tuple(v) if isinstance(v, list) else v for k, v in header.get("config", {}).items()
                           if k not in SHARED_MODEL_FIELDS}}}
    if isinstance(diffusion.get("prediction_type"), str):
        values["prediction_type"] = diffusion["prediction_type"]
    if schedule.get("kind"):
        values.update(schedule=schedule["kind"], rescale_zero_terminal_snr=bool(schedule.get("rescale_zero_terminal_snr")))
        if schedule["kind"] == "flow":
            values["flow_shift"] = float(schedule.get("shift", 1.0))
    if isinstance(header.get("data", {}).get("resolution"), int):
        values["resolution"] = header["data"]["resolution"]
    if isinstance(header.get("codec"), dict) and header["codec"].get("type") == "vae":
        values["vae"] = str(folder)
    return values


def read_header(name: str, flag: str = "init_from") -> tuple[Path, dict]:
    """A package's folder and config.json; one clear line when there is none."""
    folder = init_folder(name)
    path = folder / "config.json" if folder else None
    if path is None or not path.is_file():
        from difflab.settings import BUNDLED_MODELS
        raise ValueError(f"{flag}: no difflab model package at {name} (a folder written by difflab train, "
                         f"or a bundled model's name: {', '.join(BUNDLED_MODELS)})")
    try:
        return folder, json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{flag}: {path} is not valid JSON: {error}") from None


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
