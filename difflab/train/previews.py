"""The trainer's preview grids (``OUT/samples-step-N.png``): samples of the preview prompts, a VAE's
reconstructions, or a ControlNet's control images above what the model makes of them."""

from __future__ import annotations

from PIL import Image

from difflab.outputs import write_file
from difflab.train.latents import reconstruction_grid


def write_sample_grid(trainer) -> None:
    if trainer.config.task == "vae":         # eight training images above their reconstructions
        images, _ = trainer.data.batch(list(range(min(8, len(trainer.data)))))
        grid = reconstruction_grid(trainer.ema_model().to(trainer.accelerator.device), images)
    elif trainer.controls is not None:
        grid = _controlled_grid(trainer)
    else:
        prompts = getattr(trainer.data.dataset, "preview_prompts", None) or [trainer.data.item(p)[1] for p in range(4)]
        result = trainer.pipeline()(list(prompts), seed=0)
        grid = result.grid(columns=1 if trainer.data.media == "video" else None)   # a clip's filmstrip per row
    write_file(trainer.out / f"samples-step-{trainer.step}.png", lambda f: grid.save(f, format="PNG"), overwrite=True)


def _controlled_grid(trainer) -> Image.Image:
    """The first four training items' control images (top row) and the model's images for their
    captions under the EMA ControlNet (bottom row)."""
    from difflab.data.images import to_images

    positions = list(range(min(4, len(trainer.data))))
    controls = trainer.controls.batch(positions)
    pipe = trainer.pipeline()
    result = pipe([trainer.data.item(p)[1] for p in positions], seed=0, control_image=to_images(controls * 2 - 1))
    tiles = to_images(controls * 2 - 1) + [im.convert("RGB") for im in result.images]
    side = tiles[0].width
    grid = Image.new("RGB", (side * len(positions), side * 2))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % len(positions)) * side, (i // len(positions)) * side))
    return grid
