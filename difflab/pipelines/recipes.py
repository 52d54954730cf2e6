"""Recipes and results: every image carries the JSON recipe that replays it.

A recipe is a JSON dict (prompt, negative prompt, seed, sampler, steps, spacing, guidance, size,
model name and weights hash, difflab version) stored in each PNG's text chunk ``difflab``;
``Pipeline.replay(recipe)`` regenerates the identical image.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, PngImagePlugin

RECIPE_KEY = "difflab"


@dataclass
class Result:
    images: list[Image.Image]
    recipes: list[dict]

    def grid(self, columns: int | None = None) -> Image.Image:
        columns = columns or min(len(self.images), 8)
        rows = -(-len(self.images) // columns)
        w, h = self.images[0].size
        canvas = Image.new("RGB", (columns * w, rows * h), "white")
        for i, image in enumerate(self.images):
            canvas.paste(image.convert("RGB"), ((i % columns) * w, (i // columns) * h))
        return canvas

    def save(self, folder, prefix: str = "image") -> list[Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, (image, recipe) in enumerate(zip(self.images, self.recipes)):
            path = folder / f"{prefix}-{recipe['seed']}-{i:03d}.png"
            save_png(image, recipe, path)
            paths.append(path)
        return paths


def save_png(image: Image.Image, recipe: dict, path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text(RECIPE_KEY, json.dumps(recipe, sort_keys=True))
    image.save(path, pnginfo=info)


def read_recipe(path) -> dict:
    """The recipe stored in a PNG written by difflab."""
    try:
        with Image.open(path) as image:
            text = image.text.get(RECIPE_KEY) if hasattr(image, "text") else None
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path} as an image: {error}") from None
    if text is None:
        raise ValueError(f"{path} holds no difflab recipe (was it written by difflab generate?)")
    return json.loads(text)


def weights_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    with open(Path(folder) / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
