"""Output files written safely: complete or absent, never through a link, never over an input.

Every file difflab writes (images, grids, reports, logs) goes through here:

- **Atomic**: the bytes go to a hidden temporary file in the same folder (``.NAME.tmp-PID-XXXXXX``:
  hidden, and never ending in the real suffix), which is flushed, fsynced and then moved onto its
  final name. A reader, or a SIGKILL at any moment, sees the whole file or no file. Temporary files
  of a process that died are removed by the next write in that folder.
- **No silent overwrite**: a final name that is taken gets the next free counter prefix, as
  AUTOMATIC1111's web UI names its outputs (``00012-image-0-000.png``), unless ``overwrite=True``.
  Without ``overwrite`` the file is committed with ``os.link``, which fails rather than replace a
  file another process created in the meantime.
- **Never through a link, never over an input**: a symbolic link (or anything but a regular file)
  at the final name, or a file that is one of the run's inputs, is never replaced, even with
  ``overwrite=True``: the file takes a counter name instead.

``check_output_folder`` / ``check_output_file`` check a destination before any compute, so a bad
``--out`` costs one line, not a finished run.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path
from typing import Callable, Iterable

COUNTER = re.compile(r"^(\d{5,})-")
TMP_MARK = ".tmp-"
STALE_TMP = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")


def check_output_folder(path, what: str = "--out") -> Path:
    """``path`` is a writable folder, or a folder that can be created there; else a one-line ValueError."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise ValueError(f"{what} {path} is a file (or a broken link), not a folder; give a folder")
        _check_writable(path, what, path)
        return path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {path} cannot be created: {parent} is a file, not a folder")
    _check_writable(parent, what, path)
    return path


def check_output_file(path, what: str = "--out") -> Path:
    """``path`` can be a new file: not a folder, in a folder that exists or can be created and is writable."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give the path of a file")
    check_output_folder(path.parent, f"the folder of {what} {path}")
    return path


def _check_writable(folder: Path, what: str, path: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} is not writable (no write permission on {folder})")


def free_names(folder, names: list[str], overwrite: bool = False, inputs: Iterable = ()) -> list[Path]:
    """Final paths for ``names`` in ``folder``: the names themselves when none is taken, else all with the
    next free counter prefix (one prefix for the batch, so its files stay together)."""
    folder, inputs = Path(folder), _Inputs(inputs)
    plain = [folder / name for name in names]
    if not any(_taken(p, overwrite, inputs) for p in plain):
        return plain
    counter = next_counter(folder)
    while True:
        paths = [folder / f"{counter:05d}-{name}" for name in names]
        if not any(_taken(p, overwrite, inputs) for p in paths):
            return paths
        counter += 1


def next_counter(folder: Path) -> int:
    """One more than the largest counter prefix in ``folder`` (1 in a folder without any)."""
    try:
        numbers = [int(m.group(1)) for entry in os.scandir(folder) if (m := COUNTER.match(entry.name))]
    except FileNotFoundError:
        numbers = []
    return max(numbers, default=0) + 1


def write_file(path, write: Callable, overwrite: bool = False, inputs: Iterable = ()) -> Path:
    """Write through ``write(binary_file)`` atomically to ``path``, or to a free counter name next to it
    when ``path`` is taken (see the module docstring). Returns the path written."""
    path, inputs = Path(path), _Inputs(inputs)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale_temporary(folder)
    tmp = folder / f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(3)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        final = _commit(tmp, path, overwrite, inputs)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    fsync_folder(folder)
    return final


def write_bytes(path, data: bytes, overwrite: bool = False, inputs: Iterable = ()) -> Path:
    return write_file(path, lambda f: f.write(data), overwrite, inputs)


def write_text(path, text: str, overwrite: bool = False, inputs: Iterable = ()) -> Path:
    return write_bytes(path, text.encode("utf-8"), overwrite, inputs)


def append_text(path, text: str) -> None:
    """Append to a log file, never through a symbolic link (for logs that grow row by row)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "a", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def clean_stale_temporary(folder) -> None:
    """Remove the temporary files of writers that died (their process no longer exists)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = STALE_TMP.match(entry.name)
        if match and not _alive(int(match.group(1))) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except OSError:
                pass


def _commit(tmp: Path, path: Path, overwrite: bool, inputs: "_Inputs") -> Path:
    """Move ``tmp`` onto ``path`` (or the next free counter name); never replaces a link or an input."""
    final = path
    for _ in range(1000):
        if overwrite and not _taken(final, True, inputs):
            os.replace(tmp, final)      # replaces a regular file; ``_taken`` refused links and inputs
            return final
        if not overwrite and not os.path.lexists(final):
            try:
                os.link(tmp, final)     # fails if the name appeared meanwhile: never a silent overwrite
                return final
            except FileExistsError:
                pass
            except OSError:             # a filesystem without hard links: checked replace instead
                if not os.path.lexists(final):
                    os.replace(tmp, final)
                    return final
        final = free_names(path.parent, [path.name], False, inputs)[0]   # a name nobody holds
    raise OSError(f"could not find a free name for {path}")


def _taken(path: Path, overwrite: bool, inputs: "_Inputs") -> bool:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return not overwrite or not stat.S_ISREG(info.st_mode) or inputs.contains(path, info)


class _Inputs:
    """The run's input files, matched by identity (device and inode) or by resolved path."""

    def __init__(self, paths: Iterable):
        self.paths = [p for p in (paths.paths if isinstance(paths, _Inputs) else paths) if p is not None]
        self.ids, self.real = set(), set()
        for p in self.paths:
            self.real.add(os.path.realpath(p))
            try:
                info = os.stat(p)
                self.ids.add((info.st_dev, info.st_ino))
            except OSError:
                pass

    def contains(self, path: Path, info: os.stat_result) -> bool:
        return (info.st_dev, info.st_ino) in self.ids or os.path.realpath(path) in self.real


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
