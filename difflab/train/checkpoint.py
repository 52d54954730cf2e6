"""Training checkpoints: complete or absent, never half-written.

``OUT/checkpoints/step-N/`` holds ``model.safetensors``, ``ema.safetensors``, ``optimizer.pt``
(AdamW moments; loaded with ``weights_only=True``, which runs no code) and ``state.json`` (step,
samples consumed, skipped steps, torch RNG state, the config). A checkpoint is written into a
temporary folder and renamed into place; older ones are deleted only after the new one is complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"^step-(\d+)$")
TMP_PREFIX = ".tmp-"


def checkpoint_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def save_checkpoint(out: Path, step: int, model_state: dict, ema_state: dict, optimizer_state: dict,
                    state: dict, keep: int) -> Path:
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
    _fsync_dir(tmp)
    if final.exists():  # same step saved again (e.g. at the end): replace atomically enough
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    _prune(root, keep)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint, or None. Leftover temporary folders are ignored."""
    root = checkpoint_dir(out)
    if not root.is_dir():
        return None
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir())
    return steps[-1][1] if steps else None


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    missing = [f for f in ("model.safetensors", "ema.safetensors", "optimizer.pt", "state.json")
               if not (path / f).is_file()]
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete: missing {missing}")
    return {
        "model": load_file(path / "model.safetensors"),
        "ema": load_file(path / "ema.safetensors"),
        "optimizer": torch.load(path / "optimizer.pt", weights_only=True),
        "state": json.loads((path / "state.json").read_text()),
    }


def clean_temporary(out: Path) -> None:
    """Remove temporary folders left by a run that was killed while writing a checkpoint."""
    root = checkpoint_dir(out)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def _prune(root: Path, keep: int) -> None:
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)))
    for _, p in steps[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def _contiguous(state: dict) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
