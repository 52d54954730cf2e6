"""Training checkpoints: complete or absent, never half-written.

``OUT/checkpoints/step-N/`` holds ``model.safetensors``, ``ema.safetensors``, ``optimizer.pt``
(AdamW moments; loaded with ``weights_only=True``, which runs no code) and ``state.json`` (step,
samples consumed, skipped steps, torch RNG state, the config). A checkpoint is written into a
temporary folder and renamed into place; older ones are deleted only after the new one is complete.
A checkpoint damaged later (a truncated copy, a full disk) is detected when it is read:
``load_latest`` then falls back to the newest one that reads completely, and says so.

torch and safetensors are imported by the functions that read or write tensors, so the command
line's checks of an output folder (:func:`check_run_folder`) run before torch is imported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from difflab.outputs import fsync_folder

STEP_DIR = re.compile(r"^step-(\d+)$")
TMP_PREFIX = ".tmp-"


def save_file(tensors: dict, path: Path) -> None:
    """safetensors' writer, imported on first use."""
    from safetensors.torch import save_file as write

    write(tensors, path)


def checkpoint_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def save_checkpoint(out: Path, step: int, model_state: dict, ema_state: dict, optimizer_state: dict,
                    state: dict, keep: int) -> Path:
    import torch

    root = checkpoint_dir(out)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f"{TMP_PREFIX}step-{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_contiguous(model_state), tmp / "model.safetensors")
    save_file(_contiguous(ema_state), tmp / "ema.safetensors")
    torch.save(optimizer_state, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    fsync_folder(tmp)
    if final.exists():  # same step saved again (e.g. at the end): replace atomically enough
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_folder(root)
    _prune(root, keep, step)
    return final


def checkpoints(out: Path) -> list[Path]:
    """The checkpoint folders, newest first. Leftover temporary folders are ignored."""
    root = checkpoint_dir(out)
    if not root.is_dir():
        return []
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir())
    return [p for _, p in reversed(steps)]


def latest_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint folder, or None."""
    found = checkpoints(out)
    return found[0] if found else None


def check_run_folder(out: Path, resume: bool) -> None:
    """Before anything is built: ``--resume`` needs a checkpoint in ``out``, a new run an ``out``
    without one (it would mix two runs)."""
    found = latest_checkpoint(out) is not None
    if resume and not found:
        raise ValueError(f"no checkpoint in {out}; run without --resume to start a new run")
    if found and not resume:
        raise ValueError(f"{out} already holds checkpoints: pass --resume to continue, or another --out")


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's tensors and state; ValueError naming the file if one is missing or damaged."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    missing = [f for f in ("model.safetensors", "ema.safetensors", "optimizer.pt", "state.json")
               if not (path / f).is_file()]
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete: missing {missing}")
    loaders = {"model": (load_file, "model.safetensors"), "ema": (load_file, "ema.safetensors"),
               "optimizer": (lambda f: torch.load(f, weights_only=True), "optimizer.pt"),
               "state": (lambda f: json.loads(f.read_text()), "state.json")}
    saved = {}
    for key, (load, name) in loaders.items():
        try:
            saved[key] = load(path / name)
        except (OSError, ValueError, RuntimeError, EOFError, SafetensorError) as error:  # truncated or corrupt
            raise ValueError(f"checkpoint {path} is damaged: {name} cannot be read "
                             f"({' '.join(str(error).split())[:120]})") from None
    if not isinstance(saved["state"], dict) or "step" not in saved["state"]:
        raise ValueError(f"checkpoint {path} is damaged: state.json holds no step")
    return saved


def load_latest(out: Path, log=print) -> tuple[Path, dict]:
    """The newest checkpoint that reads completely; a damaged newer one is reported and passed over."""
    damaged = []
    for path in checkpoints(out):
        try:
            saved = load_checkpoint(path)
        except ValueError as error:
            damaged.append(str(error))
            continue
        if damaged:
            log(f"{'; '.join(damaged)}: resuming from the previous complete one, {path.name}")
        return path, saved
    if damaged:
        raise ValueError(f"no complete checkpoint in {checkpoint_dir(out)}: {'; '.join(damaged)}; "
                         "start a new run with another --out")
    check_run_folder(out, resume=True)  # raises: there is no checkpoint at all
    raise AssertionError("unreachable")


def clean_temporary(out: Path) -> None:
    """Remove temporary folders left by a run that was killed while writing a checkpoint."""
    root = checkpoint_dir(out)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def _prune(root: Path, keep: int, step: int) -> None:
    """Keep the ``keep`` newest; a checkpoint newer than ``step`` is a damaged one a resume passed over."""
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)))
    newer = [p for n, p in steps if n > step]
    older = [p for n, p in steps if n <= step][:-keep]
    for p in newer + older:
        shutil.rmtree(p, ignore_errors=True)


def _contiguous(state: dict) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}
