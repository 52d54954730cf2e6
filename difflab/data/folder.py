"""Any folder of images, with captions, following the Hugging Face ``imagefolder`` and kohya conventions.

Captions come from ``metadata.jsonl`` (one JSON object per line with ``file_name`` and a ``text`` or
``caption`` field, as Hugging Face ``imagefolder``) or from a ``name.txt`` file beside ``name.png``
(as kohya's trainers); metadata wins when both exist. A top-level sub-folder named ``N_name`` (kohya's
DreamBooth layout, e.g. ``10_cyan/``) repeats each of its images ``N`` times per pass over the dataset, so a
handful of concept images weighs as much as a larger folder of regularization images beside them; other
folders count once. Every image is decoded once when the dataset is
opened: unreadable, empty or truncated files are skipped with one warning each, never fatal unless
nothing usable remains. Images without a caption train unconditionally; one warning says how many.
Other modes (CMYK, palette, grey, alpha) are converted to RGB.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from difflab import limits

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_FIELDS = ("text", "caption")
MAX_REPEATS = 1000                      # a kohya folder's N: beyond this it is a typo, not a weighting
_REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def _read_metadata(root: Path) -> dict[str, str]:
    """``file_name -> caption`` from ``metadata.jsonl``; a malformed line is an error naming it."""
    path = root / "metadata.jsonl"
    if not path.is_file():
        return {}
    captions = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            name = record["file_name"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: expected a JSON object with 'file_name' and 'text' or "
                             f"'caption', got {line[:80]!r} ({error})") from None
        captions[str(name)] = next((str(record[f]) for f in CAPTION_FIELDS if f in record), "")
    return captions


def repeats(root: Path, path: Path) -> int:
    """How often ``path`` counts per pass: ``N`` inside a top-level ``N_name`` folder of ``root``, else 1."""
    parts = path.relative_to(root).parts
    match = _REPEAT_FOLDER.match(parts[0]) if len(parts) > 1 else None
    if not match:
        return 1
    n = int(match.group(1))
    if not 1 <= n <= MAX_REPEATS:
        raise ValueError(f"{root / parts[0]}: a kohya folder name N_name repeats its images N times, and N must be "
                         f"in [1, {MAX_REPEATS}], got {n}; rename the folder")
    return n


def _probe(path: Path) -> str | None:
    """None if the image decodes completely, else why not."""
    if path.stat().st_size == 0:
        return "empty file"
    try:
        with limits.open_image(path) as image:  # too many pixels: refused before decoding
            image.load()
    except Exception as error:  # any decoder failure means: skip this file, say why
        return " ".join(f"{type(error).__name__}: {error}".split())
    return None


class ImageFolderDataset:
    """Items are ``{"image": PIL RGB image, "caption": str, "path": str}``.

    With ``resolution`` set, images are resized (shorter side) and centre-cropped to a square.
    ``skipped`` lists the files that could not be read and why; ``summary()`` says how many. ``files``
    lists an image of an ``N_name`` folder ``N`` times (:func:`repeats`); ``len`` counts the repeats.
    """

    channels = 3                  # every image is converted to RGB
    num_classes = None            # conditioned on captions, not class labels

    def __init__(self, root: str | Path, resolution: int | None = None, recursive: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"image folder {str(root)!r} does not exist or is not a directory")
        if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
            raise ValueError(f"resolution must be a positive integer or None, got {resolution!r}")
        self.resolution = resolution
        metadata = _read_metadata(self.root)
        pattern = "**/*" if recursive else "*"
        files = sorted(p for p in self.root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        counts = {path: repeats(self.root, path) for path in files}     # every folder name checked before decoding
        if not files:
            raise ValueError(f"no readable images in {str(root)!r}: it holds no files ending in "
                             f"{', '.join(IMAGE_SUFFIXES)}" + (" (sub-folders included)" if recursive else ""))
        self.files: list[Path] = []
        self.captions: list[str] = []
        self.skipped: list[Skipped] = []
        for path in files:
            reason = _probe(path)
            if reason:
                self.skipped.append(Skipped(str(path), reason))
                continue
            caption = self._caption(path, metadata)
            self.files += [path] * counts[path]
            self.captions += [caption] * counts[path]
        if not self.files:
            reasons = "; ".join(f"{Path(s.path).name}: {s.reason}" for s in self.skipped[:3])
            raise ValueError(f"no readable images in {str(root)!r}: all {len(self.skipped)} image files were "
                             f"skipped ({reasons}{'; ...' if len(self.skipped) > 3 else ''})")
        for skipped in self.skipped:
            warnings.warn(f"skipping {skipped.path}: {skipped.reason}", stacklevel=2)
        if self.skipped:
            warnings.warn(f"{self.root}: {len(set(self.files))} images read, {len(self.skipped)} skipped", stacklevel=2)
        self._warn_uncaptioned()

    def _warn_uncaptioned(self) -> None:
        bare = list(dict.fromkeys(path.relative_to(self.root).as_posix()
                                  for path, caption in zip(self.files, self.captions) if not caption))
        if bare:
            warnings.warn(f"{self.root}: {len(bare)} of {len(set(self.files))} images have no caption (no metadata.jsonl "
                          f"entry, no .txt beside them) and train unconditionally: {', '.join(bare[:3])}"
                          + (", ..." if len(bare) > 3 else ""), stacklevel=3)

    def _caption(self, path: Path, metadata: dict[str, str]) -> str:
        key = path.relative_to(self.root).as_posix()
        if key in metadata:
            return metadata[key]
        side = path.with_suffix(".txt")
        return side.read_text(encoding="utf-8", errors="replace").strip() if side.is_file() else ""

    def summary(self) -> str:
        kept, unique = len(self.files), len(set(self.files))
        lines = [f"{self.root}: {unique} images read, {len(self.skipped)} skipped"
                 + (f", {kept} with kohya's folder repeats" if kept != unique else "")]
        lines += [f"  skipped {s.path}: {s.reason}" for s in self.skipped[:20]]
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        if not isinstance(index, int) or not 0 <= index < len(self):
            raise IndexError(f"index must be in [0, {len(self)}), got {index!r}")
        with Image.open(self.files[index]) as image:
            image = image.convert("RGB")
        if self.resolution:
            image = ImageOps.fit(image, (self.resolution, self.resolution), Image.Resampling.BICUBIC)
        return {"image": image, "caption": self.captions[index], "path": str(self.files[index])}
