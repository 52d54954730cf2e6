"""``difflab serve`` with the bundled video and audio models beside the image model: the API lists what
each makes, runs their jobs with live previews, and serves clips and sounds that open in standard
readers (PyAV, soundfile) and carry the recipe that replays them."""

from __future__ import annotations

import base64
import io
import json

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from difflab.pipelines.media_files import read_media_recipe
from difflab.serve.models import load_pipelines
from test_serve_api import client, wait


@pytest.fixture(scope="module")
def pipelines():
    return load_pipelines(["shapes", "shapes-video", "sounds"])


def run(c, **fields) -> tuple[dict, list[Image.Image]]:
    """A job run to its end, and the live previews its event stream sent."""
    response = c.post("/api/v1/jobs", json={"steps": 2, "seed": 3, **fields})
    assert response.status_code == 202, response.text
    with c.stream("GET", response.json()["events"]) as stream:
        previews = [json.loads(line[6:])["preview"] for line in stream.iter_lines()
                    if line.startswith("data: ") and '"preview"' in line]
    job = wait(c, response.json()["id"], timeout=120)
    assert job["state"] == "succeeded", job
    return job, [Image.open(io.BytesIO(base64.b64decode(p.split(",", 1)[1]))) for p in previews]


def fetch(c, url: str, content_type: str, tmp_path, suffix: str):
    response = c.get(url)
    assert response.status_code == 200 and response.headers["content-type"].startswith(content_type)
    path = tmp_path / f"fetched{suffix}"
    path.write_bytes(response.content)
    return path


def test_models_say_what_they_make(tmp_path, pipelines):
    with client(tmp_path, pipelines) as c:
        models = {m["name"]: m for m in c.get("/api/v1/models").json()["models"]}
    assert {name: m["media"] for name, m in models.items()} == {
        "shapes": "image", "shapes-video": "video", "sounds": "audio"}
    assert models["shapes-video"]["frames"] == 8 and models["shapes"]["frames"] is None
    assert "a red circle moving right" in models["shapes-video"]["examples"]
    assert "a low note then a high note" in models["sounds"]["examples"]


def test_a_video_job_gives_a_gif_to_show_and_an_mp4_to_keep(tmp_path, pipelines):
    with client(tmp_path, pipelines) as c:
        job, previews = run(c, model="shapes-video", prompt="a red circle moving right", num_images=2)
        first, second = job["images"]
        assert first["media"] == "video" and first["name"].endswith(".gif") and first["file"].endswith(".mp4")
        gif = fetch(c, first["url"], "image/gif", tmp_path, ".gif")
        mp4 = fetch(c, first["file_url"], "video/mp4", tmp_path, ".mp4")
    with Image.open(gif) as image:
        assert image.n_frames == 8 and image.size == (32, 32)
    with av.open(str(mp4)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 8 and frames[0].shape == (32, 32, 3)
    assert read_media_recipe(mp4) == read_media_recipe(gif) == first["recipe"]
    assert [first["recipe"]["seed"], second["recipe"]["seed"]] == [3, 4]
    # the clip is the pipeline's own: its recipe replays it (an MP4 is lossy: compare within its error)
    replayed = pipelines["shapes-video"].replay(first["recipe"]).videos[0]
    assert np.abs(np.stack(frames).astype(int) - replayed.astype(int)).mean() < 6
    assert len(previews) == 2 and previews[-1].size == (32, 32)           # one frame of the clip per step


def test_an_audio_job_gives_a_spectrogram_to_show_and_a_wav_to_keep(tmp_path, pipelines):
    with client(tmp_path, pipelines) as c:
        job, previews = run(c, model="sounds", prompt="a low note then a high note")
        (sound,) = job["images"]
        assert sound["media"] == "audio" and sound["name"].endswith(".png") and sound["file"].endswith(".wav")
        png = fetch(c, sound["url"], "image/png", tmp_path, ".png")
        wav = fetch(c, sound["file_url"], "audio/wav", tmp_path, ".wav")
    wave, rate = soundfile.read(wav)
    assert rate == 16_000 and wave.shape == (16_384,) and np.abs(wave).max() > 0.01
    assert Image.open(png).size == (64, 64) and len(previews) == 2 and previews[-1].size == (64, 64)
    assert read_media_recipe(wav) == sound["recipe"]
    replayed = pipelines["sounds"].replay(sound["recipe"]).audio[0]
    assert np.abs(wave - replayed).max() < 2 / 32768                      # the same sound, to 16-bit rounding


@pytest.mark.parametrize("fields, field", [
    ({"width": 64}, "width"), ({"height": 32}, "height"), ({"strength": 0.5}, "strength"),
    ({"outpaint": [8, 8, 0, 0]}, "outpaint"), ({"num_images": 10**6}, "num_images")])
def test_image_only_fields_are_refused_for_a_video_model(tmp_path, pipelines, fields, field):
    with client(tmp_path, pipelines) as c:
        response = c.post("/api/v1/jobs", json={"model": "shapes-video", "prompt": "a red circle moving right", **fields})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", field], error
