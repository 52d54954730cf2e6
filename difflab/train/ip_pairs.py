"""Reference images for training an IP-Adapter (Ye et al. 2023) on the shapes world.

IP-Adapter trains on (image, text, image prompt) triples (Sec. 3.3); the image prompt is a picture
of the same content. Fed the training image itself, the adapter could learn to copy its layout
pixel for pixel; so the reference here is another render of the item: the same objects (the item's
canonical prompt, with the colours and background the prompt left free pinned to the item's own)
in other places and, where the prompt leaves them free, other sizes. What stays is what an image
prompt should carry (which shapes, which colours, on what ground); what changes is what the text and
the noise decide. An unplaced pair ("X and Y") is drawn with X first in reading order, as the words
of the teacher (:class:`~difflab.train.image_prompt.SceneTeacher`) put it, so the object slots of
the reference, in reading order, say which object the target draws first.
"""

from __future__ import annotations

import random
from dataclasses import replace

from PIL import Image

from difflab.data.shapes import Scene, render_scene, scene_for
from difflab.data.shapes_grammar import format_prompt, parse_prompt


def pinned_prompt(item: dict) -> str:
    """The item's canonical prompt with every object's colour and the background fixed to the item's scene."""
    scene: Scene = item["scene"]
    prompt = parse_prompt(item["prompt"])
    # realize() draws objects in the order of prompt.objects (a count prompt's copies share one spec)
    objects = tuple(replace(spec, colour=obj.colour) for spec, obj in zip(prompt.objects, scene.objects))
    return format_prompt(replace(prompt, objects=objects, background=scene.background))


def reference_image(item: dict, resolution: int = 32, seed: int = 0, index: int = 0) -> Image.Image:
    """The image prompt of shapes item ``index`` (its dataset position): a render of :func:`pinned_prompt`
    with a render seed drawn from ``(index, seed)``, so deterministic; ``seed`` varies it (per epoch, say).
    Object offsets are continuous, so its placement differs from the item's own (almost surely)."""
    return render_scene(reference_scene(item, seed, index), resolution)


def reference_scene(item: dict, seed: int = 0, index: int = 0) -> Scene:
    """The scene :func:`reference_image` draws (nothing is rendered)."""
    if not isinstance(item, dict) or "prompt" not in item or not isinstance(item.get("scene"), Scene):
        keys = sorted(item) if isinstance(item, dict) else type(item).__name__
        raise ValueError(f"reference images are drawn for shapes items (keys 'prompt' and 'scene'), got {keys}: "
                         f"IP-Adapter reference pairs need the shapes dataset")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (seed, index)):
        raise ValueError(f"seed and index must be non-negative integers, got seed={seed!r}, index={index!r}")
    render_seed = random.Random(f"difflab-ip-reference-{index}-{seed}").getrandbits(48)
    return scene_for(pinned_prompt(item), render_seed, and_order="reading")
