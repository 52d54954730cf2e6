"""Limits on what one call may ask for, all in one place and checked before anything is allocated.

A request above a limit raises :class:`LimitError` (a ``ValueError``) with one line: what was
asked, the limit, and how to raise it. Every limit can be raised (or lowered) by a user who has the
memory, in three ways::

    DIFFLAB_MAX_IMAGES=256 difflab generate ...           # environment, read once, at the first check
    difflab.limits.override(images=256)                   # from now on, in this process
    with difflab.limits.override(pixels=512 * 512): ...   # inside the block only

=================  ==============  ===========================  ============================================
field              default         environment variable         what it bounds
=================  ==============  ===========================  ============================================
images             64              DIFFLAB_MAX_IMAGES           images in one Pipeline call (prompts x
                                                                num_images; a seed list)
steps              1000            DIFFLAB_MAX_STEPS            sampling steps (argument, recipe, package
                                                                ``sampling.steps``)
pixels             65536 (256^2)   DIFFLAB_MAX_PIXELS           pixels H x W of one output in model space
                                                                (output size, outpaint canvas, package
                                                                ``data.resolution`` squared, ``sample()``)
batch_values       786432          DIFFLAB_MAX_BATCH_VALUES     values of one sampling call in model space:
                   (4x3x256^2)                                  batch x channels x H x W
input_pixels       16777216        DIFFLAB_MAX_INPUT_PIXELS     pixels of an input image, checked on its
                   (4096^2)                                     header before decoding (PIL's own
                                                                ``Image.MAX_IMAGE_PIXELS`` follows it)
network_bytes      2000000000      DIFFLAB_MAX_NETWORK_BYTES    float32 weights of a package's network,
                                                                counted from config.json on the ``meta``
                                                                device (nothing allocated) before building
network_modules    10000           DIFFLAB_MAX_NETWORK_MODULES  modules of that network (bounds the time
                                                                and memory of building it: depth, levels)
train_timesteps    100000          DIFFLAB_MAX_TRAIN_TIMESTEPS  a package schedule's ``num_train_timesteps``
                                                                (its tables are built at load)
prompt_chars       2000            DIFFLAB_MAX_PROMPT_CHARS     characters of one prompt
=================  ==============  ===========================  ============================================

How the memory defaults were chosen (bundled 32x32 shapes UNet, CPU, one thread, one step with
classifier-free guidance, which doubles the network's batch; peak RSS by ``ru_maxrss``): the loaded
pipeline holds 445 MB; a call adds about 4-6 KB per output pixel, i.e. about 1,300-2,000 bytes per
model-space value, a factor of ~330-500 over the sample's own ``batch x channels x H x W x 4``
bytes (the network's activations; attention runs through memory-efficient
``scaled_dot_product_attention``, so it grows linearly). Measured: 64 images of 32x32 add 435 MB,
one 256x256 image 389 MB, four 256x256 images (786,432 values: the ``batch_values`` default) 1,046
MB, 1.5 GB peak in all. So every request the defaults accept stays under ~1.5 GB on the bundled
model; a network k times wider needs about k times more per value, so lower ``batch_values`` for
it. ``pixels`` lets the 32x32 model outpaint to 256x256 (margins up to 112 on every side) and
refuses ``outpaint=(2032,) * 4`` (16.8 M pixels) or ``(100000, 0, 0, 0)`` (3.2 M). Input images
are refused above 4096^2 pixels before decoding (64 MB as RGBA). ``network_bytes`` refuses
``channels: [8192, 8192, 8192]`` (121 GB of weights) in ~0.1 s with no memory beyond the import; building a network
costs ~0.2 ms per module on the meta device, so ``network_modules`` keeps that under ~2 s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import threading
import warnings
from dataclasses import dataclass

ENV_PREFIX = "DIFFLAB_MAX_"


class LimitError(ValueError):
    """A request above one of difflab's limits (see :mod:`difflab.limits`)."""


@dataclass(frozen=True)
class Limits:
    """Every limit, one field each (see the module's table)."""

    images: int = 64
    steps: int = 1000
    pixels: int = 256 * 256
    batch_values: int = 4 * 3 * 256 * 256
    input_pixels: int = 4096 * 4096
    network_bytes: int = 2_000_000_000
    network_modules: int = 10_000
    train_timesteps: int = 100_000
    prompt_chars: int = 2000

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"limit {field.name} must be a positive integer, got {value!r}")


FIELDS = tuple(field.name for field in dataclasses.fields(Limits))
_current: Limits | None = None
_lock = threading.RLock()


def env_var(field: str) -> str:
    """The environment variable of a limit: ``images`` -> ``DIFFLAB_MAX_IMAGES``."""
    return ENV_PREFIX + field.upper()


def from_environment(environ=None) -> Limits:
    """The defaults, with every ``DIFFLAB_MAX_<FIELD>`` that is set applied."""
    environ = os.environ if environ is None else environ
    values = {}
    for field in FIELDS:
        text = environ.get(env_var(field))
        if text is not None:
            values[field] = _parse(text, env_var(field))
    return Limits(**values)


def _parse(text: str, name: str) -> int:
    """An integer, also written ``2e9`` or ``1_000``."""
    cleaned = text.strip().replace("_", "")
    try:
        value = int(cleaned)
    except ValueError:
        try:
            number = float(cleaned)
            value = int(number) if number.is_integer() else 0
        except ValueError:
            value = 0
    if value < 1:
        raise ValueError(f"the environment variable {name} must be a positive integer, got {text!r}")
    return value


def get() -> Limits:
    """The limits in force: the defaults, the environment (read once) and any :func:`override`."""
    global _current
    with _lock:
        if _current is None:
            _current = from_environment()
        return _current


class override:
    """Set some limits: ``override(images=256)`` from now on, or ``with override(images=256):`` for a
    block (the previous limits come back at its end). Unknown fields and bad values are refused."""

    def __init__(self, **fields):
        global _current
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown limit(s) {unknown}; the limits are {', '.join(FIELDS)}")
        with _lock:
            self.previous = get()
            _current = dataclasses.replace(self.previous, **fields)

    def __enter__(self) -> Limits:
        return get()

    def __exit__(self, *exc) -> None:
        global _current
        with _lock:
            _current = self.previous


def how_to_raise(field: str) -> str:
    return f"raise it with {env_var(field)}=N or difflab.limits.override({field}=N)"


def check(field: str, value: int, what: str) -> None:
    """Raise :class:`LimitError` when ``value`` (what ``what`` describes) is above the limit ``field``."""
    limit = getattr(get(), field)
    if value > limit:
        raise LimitError(f"{what}: {value:,} asked, the limit is {limit:,}; {how_to_raise(field)}")


def check_sample_shape(shape, what: str = "sample") -> None:
    """A model-space sample ``[B, C, *spatial]``: pixels (the spatial product) per sample and values per call."""
    batch, channels = shape[0], shape[1] if len(shape) > 1 else 1
    pixels = 1
    for side in shape[2:]:
        pixels *= side
    size = "x".join(map(str, shape[2:][::-1])) or "1"
    check("pixels", pixels, f"{what}: pixels per image in model space ({size})")
    check("batch_values", batch * channels * pixels,
          f"{what}: values per call in model space (batch {batch} x channels {channels} x {size})")


_pil_lock = threading.Lock()


@contextlib.contextmanager
def open_image(path, what: str = "image"):
    """``PIL.Image.open(path)`` under the ``input_pixels`` limit, before any pixel is decoded.

    While the header is read, PIL's own ``Image.MAX_IMAGE_PIXELS`` is the limit (its
    DecompressionBombWarning is silenced and its DecompressionBombError becomes a
    :class:`LimitError`); then the size is checked here. Yields the opened, not yet decoded, image.
    """
    from PIL import Image

    limit = get().input_pixels
    with _pil_lock:
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, limit
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(path)
        except Image.DecompressionBombError as error:
            found = re.search(r"\((\d+) pixels\)", str(error))
            asked = f"{int(found[1]):,}" if found else f"more than {2 * limit:,}"
            raise LimitError(f"{what} {path}: pixels of the input image: {asked} asked, the limit is {limit:,}; "
                             f"{how_to_raise('input_pixels')}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    with image:
        check("input_pixels", image.width * image.height,
              f"{what} {path}: pixels of the input image ({image.width}x{image.height})")
        yield image


__all__ = ["Limits", "LimitError", "get", "override", "check", "check_sample_shape", "open_image",
           "from_environment", "env_var", "FIELDS"]
