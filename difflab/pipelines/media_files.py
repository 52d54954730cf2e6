"""Video and audio files that carry their recipe, written atomically (:mod:`difflab.outputs`).

- **MP4** (H.264 through PyAV, the ffmpeg inside its wheel; yuv420p, which every player opens): the
  recipe is the container's ``comment`` tag.
- **GIF** (Pillow; loops): the recipe is the GIF comment extension.
- **WAV** (16-bit PCM through soundfile): the recipe is the ``ICMT`` comment of the RIFF INFO list.

:func:`read_media_recipe` reads the recipe back from any of the three; ``difflab generate --recipe``
replays it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from difflab.outputs import write_file

VIDEO_FORMATS = ("mp4", "gif")
MEDIA_SUFFIXES = (".mp4", ".gif", ".wav")
FPS = 8


def save_video(frames: np.ndarray, recipe: dict, path, fps: int = FPS, overwrite: bool = False, inputs=()) -> Path:
    """One clip (uint8 ``[T, H, W, C]``) as MP4 or GIF (by ``path``'s suffix) carrying ``recipe``."""
    text = json.dumps(recipe, sort_keys=True)
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        return write_file(path, lambda f: _write_gif(f, frames, text, fps), overwrite, inputs)
    if suffix == ".mp4":
        return write_file(path, lambda f: _write_mp4(f, frames, text, fps), overwrite, inputs)
    raise ValueError(f"a video is saved as .mp4 or .gif, got {path}")


def _write_mp4(f, frames: np.ndarray, text: str, fps: int) -> None:
    import av
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:      # yuv420p halves the chroma planes
        frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    rgb = frames if frames.shape[-1] == 3 else np.repeat(frames, 3, axis=-1)
    container = av.open(f, mode="w", format="mp4")
    try:
        container.metadata["comment"] = text
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = rgb.shape[2], rgb.shape[1], "yuv420p"
        stream.options = {"crf": "10"}
        for frame in rgb:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()


def _write_gif(f, frames: np.ndarray, text: str, fps: int) -> None:
    from PIL import Image
    images = [Image.fromarray(frame.squeeze(-1) if frame.shape[-1] == 1 else frame) for frame in frames]
    images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0,
                   comment=text)


def save_wav(wave: np.ndarray, sample_rate: int, recipe: dict, path, overwrite: bool = False, inputs=()) -> Path:
    """One mono waveform (float in [-1, 1]) as 16-bit WAV carrying ``recipe``."""
    import soundfile

    def write(f):
        with soundfile.SoundFile(f, "w", sample_rate, 1, format="WAV", subtype="PCM_16") as out:
            out.comment = json.dumps(recipe, sort_keys=True)
            out.write(np.clip(np.asarray(wave, dtype=np.float32), -1, 1))
    return write_file(path, write, overwrite, inputs)


def read_media_recipe(path) -> dict | None:
    """The JSON recipe a difflab MP4, GIF or WAV carries (None if it carries none); unparsed here."""
    path, suffix = Path(path), Path(path).suffix.lower()
    try:
        if suffix == ".mp4":
            import av
            with av.open(str(path)) as container:
                text = container.metadata.get("comment")
        elif suffix == ".gif":
            from PIL import Image
            with Image.open(path) as image:
                text = image.info.get("comment")
        elif suffix == ".wav":
            import soundfile
            with soundfile.SoundFile(path) as sound:
                text = sound.comment
        else:
            raise ValueError(f"{path} is not a .mp4, .gif or .wav file")
    except (OSError, RuntimeError) as error:
        raise ValueError(f"cannot read {path}: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    except Exception as error:  # PyAV and soundfile raise their own error types for damaged files
        raise ValueError(f"cannot read {path}: {type(error).__name__}: {error}"[:300]) from None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as error:
        raise ValueError(f"{path}: the difflab recipe is not valid JSON: {error}") from None
