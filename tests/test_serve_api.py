"""The REST API of ``difflab serve`` through FastAPI's TestClient: every endpoint, every refusal,
cancel, time limits, failing jobs and restarts (the browser UI is in test_serve_browser.py)."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import threading
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from difflab.pipelines.recipes import read_recipe
from difflab.serve import ServeConfig, create_app
from difflab.serve.models import load_pipelines
from difflab.serve.store import INTERRUPTED, JobStore

LOCAL = "http://127.0.0.1"
TOKEN = "a-test-token-0123456789"


@pytest.fixture(scope="module")
def pipelines():
    return load_pipelines(["shapes"])   # the 32x32 pixel model: the sizes below are its


def test_the_web_app_serves_the_default_model_when_none_is_named():
    from difflab.settings import DEFAULT_MODEL
    (name,) = load_pipelines([None])
    assert name == DEFAULT_MODEL


class Gated:
    """The bundled pipeline, held at the start of each call until ``open`` (or ``hold_s``) passes:
    jobs stay running or queued as long as a test needs."""

    def __init__(self, pipe, hold_s: float = 5.0):
        self.pipe, self.open, self.hold_s, self.entered = pipe, threading.Event(), hold_s, threading.Event()

    def __call__(self, *args, **kwargs):
        self.entered.set()
        self.open.wait(self.hold_s)
        return self.pipe(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.pipe, name)


class NonFinite(torch.nn.Module):
    """A network that diverged: every prediction is NaN."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, t, **cond):
        return x * float("nan") * self.scale


def client(tmp_path, pipelines, **settings) -> TestClient:
    config = ServeConfig(outputs=tmp_path / "out", **settings).validate()
    return TestClient(create_app(config, pipelines), base_url=LOCAL)


def wait(c, job_id, timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = c.get(f"/api/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.02)


def submit(c, **fields):
    response = c.post("/api/v1/jobs", json={"prompt": "a red circle", "steps": 3, "seed": 1, **fields})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def png_bytes(size=(32, 32), colour=(255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.filterwarnings("ignore:prompt 'a red dragon' uses words outside")
def test_server_endpoints_and_a_job_from_submit_to_image(tmp_path, pipelines):
    with client(tmp_path, pipelines) as c:
        health = c.get("/api/v1/health").json()
        assert health["status"] == "ok" and health["queue"]["capacity"] == 32
        (model,) = c.get("/api/v1/models").json()["models"]
        assert model["name"] == "shapes" and model["default"] and model["resolution"] == 32
        assert "deis" in c.get("/api/v1/samplers").json()["samplers"]
        job_id = submit(c, num_images=2, seed=5, steps=4)
        events = []
        with c.stream("GET", f"/api/v1/jobs/{job_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    events.append([line[7:]])
                elif line.startswith("data: "):
                    events[-1].append(json.loads(line[6:]))
        progress = [data for name, data in events if name == "progress"]
        assert [p["step"] for p in progress] == [1, 2, 3, 4] and all(p["total"] == 4 for p in progress)
        assert progress[-1]["preview"].startswith("data:image/png;base64,")
        preview = Image.open(io.BytesIO(base64.b64decode(progress[-1]["preview"].split(",", 1)[1])))
        assert preview.size == (32, 32)
        assert events[-1][0] == "state" and events[-1][1]["state"] == "succeeded"
        job = c.get(f"/api/v1/jobs/{job_id}").json()
        assert job["progress"] == {"step": 4, "total": 4} and job["error"] is None
        assert [image["recipe"]["seed"] for image in job["images"]] == [5, 6]
        png = c.get(job["images"][1]["url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        recipe = c.post("/api/v1/recipe", files={"file": ("x.png", png.content, "image/png")}).json()["recipe"]
        assert recipe == job["images"][1]["recipe"]
        assert c.get("/api/v1/jobs").json()["jobs"][0]["id"] == job_id
        assert job["warnings"] == []
        odd = wait(c, submit(c, prompt="a red dragon"))
        assert odd["state"] == "succeeded" and "dragon" in odd["warnings"][0]
        single = wait(c, submit(c, seed=9, sampler="euler_ancestral"))
        png = c.get(single["images"][0]["url"]).content
    # the image is the pipeline's own: the recipe replays it pixel for pixel (a batch of one, as the
    # network's arithmetic may differ in the last bit between batch sizes)
    replayed = pipelines["shapes"].replay(read_recipe(io.BytesIO(png)))
    assert np.array_equal(np.asarray(replayed.images[0]), np.asarray(Image.open(io.BytesIO(png))))


def test_openapi_and_docs_page_are_served(tmp_path, pipelines):
    with client(tmp_path, pipelines) as c:
        paths = c.get("/openapi.json").json()["paths"]
        for path in ("/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/events", "/api/v1/images/{name}",
                     "/api/v1/models", "/api/v1/samplers", "/api/v1/health", "/api/v1/recipe", "/api/v1/uploads"):
            assert path in paths
        docs = c.get("/docs")
        assert docs.status_code == 200 and "openapi.json" in docs.text and "cdn" not in docs.text.lower()


BAD_FIELDS = [
    ({"prompt": 3}, "prompt"), ({"prompt": "   "}, "prompt"), ({"prompt": "x" * 5000}, "prompt"),
    ({"steps": 0}, "steps"), ({"steps": 10**6}, "steps"), ({"steps": "5"}, "steps"), ({"steps": 2.5}, "steps"),
    ({"sampler": "nope"}, "sampler"), ({"spacing": "nope"}, "spacing"), ({"guidance_scale": "high"}, "guidance_scale"),
    ({"num_images": 0}, "num_images"), ({"num_images": 10**6}, "num_images"), ({"seed": -1}, "seed"),
    ({"width": 30}, "width"), ({"height": 30}, "height"), ({"width": 100000, "height": 4}, "width"),
    ({"model": "other"}, "model"), ({"mask": "abc"}, "mask"), ({"strength": 0.5}, "strength"),
    ({"outpaint": [1, 1, 1, 1]}, "outpaint"), ({"image": "not base64!"}, "image"),
    ({"image": "0" * 32}, "image"), ({"image": base64.b64encode(b"not an image").decode()}, "image"),
    ({"unknown_field": 1}, "unknown_field"), ({"negative_prompt": ["a"]}, "negative_prompt"),
]


@pytest.mark.parametrize("fields,field", BAD_FIELDS, ids=[f for _, f in BAD_FIELDS])
def test_a_bad_field_is_a_422_that_names_it(tmp_path, pipelines, fields, field):
    with client(tmp_path, pipelines) as c:
        response = c.post("/api/v1/jobs", json={"prompt": "a red circle", **fields})
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][:2] == ["body", field]
        assert c.get("/api/v1/jobs").json()["jobs"] == []  # nothing was queued


def test_edit_fields_checked_against_the_image(tmp_path, pipelines):
    image = base64.b64encode(png_bytes((32, 32))).decode()
    with client(tmp_path, pipelines) as c:
        checks = [({"image": image, "width": 32}, "width"), ({"image": image, "strength": 1.5}, "strength"),
                  ({"image": image, "mask": base64.b64encode(png_bytes((16, 16))).decode()}, "mask"),
                  ({"image": base64.b64encode(png_bytes((30, 30))).decode()}, "image"),
                  ({"image": image, "outpaint": [0, 0, 0, 0]}, "outpaint"), ({"image": image, "mask_blur": -1}, "mask_blur")]
        for fields, field in checks:
            response = c.post("/api/v1/jobs", json={"prompt": "a red circle", **fields})
            assert response.status_code == 422 and response.json()["detail"][0]["loc"][:2] == ["body", field], fields


def test_uploads_feed_image_to_image_inpainting_and_outpainting(tmp_path, pipelines):
    with client(tmp_path, pipelines) as c:
        upload = c.post("/api/v1/uploads", files={"file": ("in.png", png_bytes(), "image/png")})
        assert upload.status_code == 201 and upload.json()["width"] == 32
        image_id = upload.json()["id"]
        mask = Image.new("L", (32, 32), 0)
        mask.paste(255, (8, 8, 24, 24))
        buffer = io.BytesIO()
        mask.save(buffer, format="PNG")
        mask_b64 = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        jobs = [submit(c, image=image_id, strength=0.5), submit(c, image=image_id, mask=mask_b64),
                submit(c, image=image_id, outpaint=[8, 8, 0, 0])]
        done = [wait(c, job_id) for job_id in jobs]
        assert [job["state"] for job in done] == ["succeeded"] * 3, [job["error"] for job in done]
        assert done[0]["images"][0]["recipe"]["strength"] == 0.5
        assert done[1]["request"]["mask"] == "inline" and "mask" in done[1]["images"][0]["recipe"]
        inpainted = np.asarray(Image.open(io.BytesIO(c.get(done[1]["images"][0]["url"]).content)).convert("RGB"))
        assert (inpainted[:8] == [255, 0, 0]).all()  # outside the mask, the input's pixels exactly
        assert Image.open(io.BytesIO(c.get(done[2]["images"][0]["url"]).content)).size == (48, 32)
        bad = c.post("/api/v1/uploads", files={"file": ("x.png", b"GIF89a nonsense", "image/png")})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "file"]


def test_full_queue_is_429_and_cancel_stops_queued_and_running_jobs(tmp_path, pipelines):
    gated = Gated(pipelines["shapes"], hold_s=30)
    with client(tmp_path, {"shapes": gated}, queue_size=2) as c:
        running = submit(c, steps=500)
        assert gated.entered.wait(10)
        queued = [submit(c), submit(c)]
        full = c.post("/api/v1/jobs", json={"prompt": "a red circle", "steps": 3})
        assert full.status_code == 429 and "queue is full" in full.json()["detail"]
        assert c.get("/api/v1/health").json()["queue"] == {"queued": 2, "running": 1, "capacity": 2}
        assert c.delete(f"/api/v1/jobs/{queued[0]}").json()["state"] == "cancelled"
        gated.open.set()
        assert c.delete(f"/api/v1/jobs/{running}").json()["state"] == "cancelled"  # answered once it stopped
        assert wait(c, queued[1])["state"] == "succeeded"
        job = c.get(f"/api/v1/jobs/{running}").json()
        assert job["images"] == [] and job["progress"]["step"] < 500
        assert c.delete(f"/api/v1/jobs/{queued[1]}").json()["state"] == "succeeded"  # finished: unchanged
        assert c.get("/api/v1/jobs/" + "f" * 32).status_code == 404


def test_a_failing_job_ends_with_its_message_and_the_server_goes_on(tmp_path, pipelines):
    broken = dataclasses.replace(pipelines["shapes"], model=NonFinite(), name="broken")
    with client(tmp_path, {"shapes": pipelines["shapes"], "broken": broken}, job_timeout=1.0) as c:
        job = wait(c, submit(c, model="broken"))
        assert job["state"] == "failed" and "non-finite" in job["error"] and job["images"] == []
        slow = wait(c, submit(c, steps=1000, sampler="euler"))
        assert slow["state"] == "failed" and "time limit of 1 s" in slow["error"]
        assert wait(c, submit(c))["state"] == "succeeded"
        assert c.get("/api/v1/health").status_code == 200
        assert not list((tmp_path / "out" / "images").glob("*.tmp*"))


def test_a_restart_keeps_results_and_reports_interrupted_jobs_as_failed(tmp_path, pipelines):
    with client(tmp_path, pipelines) as c:
        done = wait(c, submit(c))
    gated = Gated(pipelines["shapes"], hold_s=1)
    with client(tmp_path, {"shapes": gated}) as c:
        running = submit(c, steps=200)
        assert gated.entered.wait(10)
        waiting = submit(c)
    # a server killed outright leaves rows as they were: the next start marks them too
    store = JobStore(tmp_path / "out" / "jobs.sqlite3")
    store.add("e" * 32, {"prompt": "killed"})
    store.update("e" * 32, state="running")
    store.close()
    with client(tmp_path, pipelines) as c:
        kept = c.get(f"/api/v1/jobs/{done['id']}").json()
        assert kept["state"] == "succeeded" and c.get(kept["images"][0]["url"]).status_code == 200
        for job_id in (running, waiting, "e" * 32):
            job = c.get(f"/api/v1/jobs/{job_id}").json()
            assert job["state"] == "failed" and job["error"] == INTERRUPTED
        assert len(c.get("/api/v1/jobs").json()["jobs"]) == 4


@pytest.mark.parametrize("name", ["../jobs.sqlite3", "..%2Fjobs.sqlite3", "%2Fetc%2Fpasswd", "/etc/passwd",
                                  "jobs.sqlite3", "0" * 32 + "-0.png", "..", "x.png"])
def test_image_names_are_ids_never_paths(tmp_path, pipelines, name):
    with client(tmp_path, pipelines) as c:
        (tmp_path / "out" / "images" / ("0" * 32 + "-0.png")).write_bytes(png_bytes())  # on disk, not a result
        assert c.get(f"/api/v1/images/{name}").status_code == 404


def test_a_token_guards_every_api_call_and_the_browser_logs_in_once(tmp_path, pipelines):
    with client(tmp_path, pipelines, token=TOKEN) as c:
        assert c.get("/api/v1/health").status_code == 401
        assert c.get("/api/v1/health", headers={"Authorization": "Bearer wrong-token-xxxxxxxx"}).status_code == 401
        assert c.get("/openapi.json").status_code == 401
        assert c.get("/api/v1/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        page = c.get("/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"
        assert c.get("/login").status_code == 200
        wrong = c.post("/login", data={"token": "nope"}, follow_redirects=False)
        assert wrong.headers["location"] == "/login?error=1" and "difflab_session" not in c.cookies
        right = c.post("/login", data={"token": TOKEN}, follow_redirects=False)
        assert right.status_code == 303 and "httponly" in right.headers["set-cookie"].lower()
        assert "samesite=strict" in right.headers["set-cookie"].lower()
        assert TOKEN not in right.headers["set-cookie"]
        assert c.get("/api/v1/health").status_code == 200  # the cookie now
        assert c.get("/").status_code == 200


def test_foreign_origins_and_hosts_are_refused(tmp_path, pipelines):
    with client(tmp_path, pipelines) as c:
        body = {"prompt": "a red circle", "steps": 3}
        assert c.post("/api/v1/jobs", json=body, headers={"Origin": "http://evil.example"}).status_code == 403
        assert c.post("/api/v1/jobs", json=body, headers={"Origin": "null"}).status_code == 403
        assert c.post("/api/v1/jobs", json=body, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert c.get("/api/v1/health", headers={"Host": "rebound.example:7860"}).status_code == 403
        assert c.get("/api/v1/health", headers={"Origin": LOCAL}).status_code == 200  # same origin
        assert c.get("/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}).status_code == 200
        response = c.get("/api/v1/health")
        assert response.headers["x-frame-options"] == "DENY" and "access-control-allow-origin" not in response.headers
        assert c.get("/api/v1/jobs") .json()["jobs"] == []
    with client(tmp_path, pipelines, token=TOKEN, host="0.0.0.0") as c:  # a token guards any Host name
        headers = {"Host": "my-box.lan:7860", "Authorization": f"Bearer {TOKEN}"}
        assert c.get("/api/v1/health", headers=headers).status_code == 200


def test_oversized_bodies_are_413(tmp_path, pipelines):
    with client(tmp_path, pipelines, max_body_bytes=64 * 1024) as c:
        big = png_bytes((1024, 1024)) + b"\0" * (100 * 1024)
        assert c.post("/api/v1/uploads", files={"file": ("big.png", big, "image/png")}).status_code == 413
        inline = base64.b64encode(b"\0" * (80 * 1024)).decode()
        assert c.post("/api/v1/jobs", json={"prompt": "a", "image": inline}).status_code == 413
        head = b'--abc\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        chunks = (head if i == 0 else b"x" * 1024 for i in range(100))  # no Content-Length: counted as it streams
        headers = {"content-type": "multipart/form-data; boundary=abc"}
        assert c.post("/api/v1/recipe", content=chunks, headers=headers).status_code == 413


def test_config_refusals_before_anything_loads(tmp_path):
    for settings, words in [({"host": "0.0.0.0"}, "--token"), ({"token": "short"}, "16 to 512"),
                            ({"queue_size": 0}, "--queue-size"), ({"port": 70000}, "--port"),
                            ({"job_timeout": 0}, "--job-timeout"), ({"models": [tmp_path]}, "config.json")]:
        with pytest.raises(ValueError, match=words.replace("-", r"\-")):
            ServeConfig(outputs=tmp_path / "out", **settings).validate()
    assert ServeConfig(outputs=tmp_path / "out", host="0.0.0.0", insecure=True).validate().open_host
