"""The job queue: bounded, one worker per device, cancel and a time limit per job, live progress.

``submit`` refuses a job when ``queue_size`` jobs already wait (the app answers 429); the worker runs
one job at a time on the pipelines' device, so jobs never compete for the cores or the GPU. Each step
of a running job updates its :class:`Live` state (step, total and a small preview of the current x0
estimate) that ``GET /api/v1/jobs/{id}/events`` streams. Cancelling or running past
``job_timeout`` stops a job at its next step. A job's error (a non-finite output, a model that fails)
ends that job with its message; the worker goes on.
"""

from __future__ import annotations

import base64
import io
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from difflab.pipelines import media_files
from difflab.pipelines.recipes import save_png
from difflab.serve.requests import new_id
from difflab.serve.store import FINISHED, INTERRUPTED, JobStore

PREVIEW_SIDE = 64   # previews larger than this are shrunk before they are sent


class QueueFull(RuntimeError):
    """``queue_size`` jobs are already waiting."""


class JobStopped(Exception):
    """Raised from the sampler's callback to stop a job: cancelled, timed out or shut down."""

    def __init__(self, state: str, message: str | None = None):
        super().__init__(message or state)
        self.state, self.message = state, message


@dataclass
class Live:
    """What a queued or running job reports between database writes (the event stream keeps a
    reference, so it can send every step even after the job has finished)."""

    state: str = "queued"
    step: int = 0
    total: int = 0
    steps: list = field(default_factory=list)   # one {"step", "total", "preview"} per step, for the events
    version: int = 0                 # bumped on every change; the event stream polls it
    cancel: threading.Event = field(default_factory=threading.Event)
    images: dict = field(default_factory=dict)   # decoded input images, kept in memory only

    def changed(self, **values) -> None:
        for name, value in values.items():
            setattr(self, name, value)
        self.version += 1


class JobRunner:
    """The queue and its worker thread, over a store and the server's loaded pipelines."""

    def __init__(self, store: JobStore, pipelines, images: Path, queue_size: int, job_timeout: float):
        """``pipelines``: ``{name: Pipeline}``, or a function that loads them, which then runs on the
        worker thread before anything else (measured: a job runs 1.6x slower on 2 cores when the
        weights were loaded by another thread, as each thread that touches torch keeps its own
        OpenMP team, and the two compete for the cores)."""
        self.store, self.images, self.job_timeout = store, images, job_timeout
        self.pipelines = pipelines if isinstance(pipelines, dict) else None
        self._load, self._load_error, self._loaded = (None if self.pipelines else pipelines), None, threading.Event()
        self.capacity = queue_size
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.live: dict[str, Live] = {}
        self._submit_lock = threading.Lock()
        self._state_lock = threading.Lock()   # queued -> running and queued -> cancelled exclude each other
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._work, name="difflab-worker", daemon=True)
        self._thread.start()
        self._loaded.wait()
        if self._load_error is not None:
            raise self._load_error

    # ----- the API's side -------------------------------------------------------------------------
    def submit(self, settings: dict, images: dict) -> str:
        with self._submit_lock:
            if self.queue.full() or self._stopping.is_set():
                raise QueueFull(f"the queue is full ({self.capacity} waiting, the limit); try again when a job has finished")
            job_id = new_id()
            self.store.add(job_id, settings)
            self.live[job_id] = Live(images=images)
            self.queue.put_nowait(job_id)
        return job_id

    def cancel(self, job_id: str) -> None:
        live = self.live.get(job_id)
        if live is None:
            return  # finished already (or never here): nothing to stop
        with self._state_lock:
            live.cancel.set()
            if live.state == "queued":
                self._finish(job_id, live, "cancelled", None)

    def counts(self) -> dict:
        running = sum(1 for live in list(self.live.values()) if live.state == "running")
        return {"queued": self.queue.qsize(), "running": running, "capacity": self.capacity}

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker: the running job stops at its next step; jobs left waiting are recorded as
        interrupted (failed), never lost."""
        self._stopping.set()
        for live in list(self.live.values()):
            live.cancel.set()
        self._thread.join(timeout)
        for job_id, live in list(self.live.items()):
            self._finish(job_id, live, "failed", INTERRUPTED)

    # ----- the worker's side ----------------------------------------------------------------------
    def _work(self) -> None:
        try:
            if self._load is not None:
                self.pipelines = self._load()
        except Exception as error:  # reported by the constructor, on the caller's thread
            self._load_error = error
            return
        finally:
            self._loaded.set()
        while not self._stopping.is_set():
            try:
                job_id = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            with self._state_lock:
                live = self.live.get(job_id)
                if live is None or live.state in FINISHED or live.cancel.is_set():
                    continue  # cancelled while it waited
                live.changed(state="running")
            self._run(job_id, live)

    def _run(self, job_id: str, live: Live) -> None:
        job = self.store.get(job_id)
        settings = job["request"]
        pipe = self.pipelines[settings["model"]]
        live.changed(total=settings["steps"] or pipe.defaults["steps"])
        self.store.update(job_id, state="running", total=live.total)
        try:
            result = pipe(**_arguments(settings, live.images), callback=self._callback(live, pipe))
            names = self._save(job_id, result)
        except JobStopped as stop:
            message = INTERRUPTED if self._stopping.is_set() else stop.message
            self._finish(job_id, live, "failed" if message else stop.state, message)
        except Exception as error:  # any failure ends this job only; the worker goes on
            self._finish(job_id, live, "failed", _one_line(error))
        else:
            self._finish(job_id, live, "succeeded", None, images=names)

    def _callback(self, live: Live, pipe):
        deadline = time.monotonic() + self.job_timeout

        def report(info: dict) -> None:
            if live.cancel.is_set():
                raise JobStopped("cancelled")
            if time.monotonic() > deadline:
                raise JobStopped("failed", f"the job ran past its time limit of {self.job_timeout:g} s")
            step = min(int(info["i"]) + 1, live.total)
            live.steps.append({"step": step, "total": live.total, "preview": _preview(pipe, info["denoised"])})
            live.changed(step=step)
        return report

    def _save(self, job_id: str, result) -> list[dict]:
        """Each output as files that carry its recipe: ``name`` is what a page shows (a PNG; for a clip an
        animated GIF, for a sound its spectrogram), ``file`` what a user keeps (the PNG, an MP4, a WAV)."""
        saved = []
        for i, (image, recipe) in enumerate(zip(result.images, result.recipes)):
            stem = self.images / f"{job_id}-{i}"
            if result.videos is not None:
                shown = media_files.save_video(result.videos[i], recipe, stem.with_suffix(".gif"))
                kept, media = media_files.save_video(result.videos[i], recipe, stem.with_suffix(".mp4")), "video"
            elif result.audio is not None:
                shown = save_png(image, recipe, stem.with_suffix(".png"))
                kept = media_files.save_wav(result.audio[i], result.sample_rate, recipe, stem.with_suffix(".wav"))
                media = "audio"
            else:
                shown = kept = save_png(image, recipe, stem.with_suffix(".png"))
                media = "image"
            saved.append({"name": shown.name, "url": f"/api/v1/images/{shown.name}", "file": kept.name,
                          "file_url": f"/api/v1/images/{kept.name}", "media": media, "recipe": recipe})
        return saved

    def _finish(self, job_id: str, live: Live, state: str, error: str | None, images=()) -> None:
        if live.state in FINISHED:
            return
        values = {"state": state, "error": error, "step": live.step}
        if images:
            values["images"] = list(images)
        self.store.update(job_id, **values)  # recorded before it is reported
        live.changed(state=state, images={})
        self.live.pop(job_id, None)


def _arguments(settings: dict, images: dict) -> dict:
    """The pipeline's keyword arguments from a checked request."""
    args = {key: settings[key] for key in ("prompt", "negative_prompt", "num_images", "seed", "steps", "sampler",
                                           "guidance_scale", "spacing", "width", "height", "strength")}
    if settings["seed"] is None:  # one random seed for the job, recorded in every recipe
        import secrets
        args["seed"] = secrets.randbelow(2**31)
    outpaint = settings.get("outpaint")
    return {**args, "image": images.get("image"), "mask": images.get("mask"),
            "outpaint": tuple(outpaint) if outpaint else None, "mask_blur": settings["mask_blur"]}


def _preview(pipe, x0) -> str | None:
    """The first output's x0 estimate as a small PNG data: URL (None if it is not finite yet): an image,
    a clip's middle frame, a sound's spectrogram (low frequencies at the bottom)."""
    from difflab.data.images import to_images
    z = x0[:1].float()
    if z.dim() == 5:                                   # a clip [1, C, T, H, W]
        z = z[:, :, z.shape[2] // 2]
    try:
        decoded = pipe.codec.decode(z)
        image = to_images(decoded.flip(-2) if pipe.codec.media == "audio" else decoded)[0]
    except FloatingPointError:
        return None
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, (ValueError, OSError, FloatingPointError)) else f"{type(error).__name__}: {text}"
