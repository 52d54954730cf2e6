"""The FastAPI app of ``difflab serve``: REST API under ``/api/v1``, the browser UI, the login page.

    app = create_app(ServeConfig(outputs="outputs/serve").validate())

Routes only translate HTTP to the job queue (:mod:`difflab.serve.jobs`) and the store
(:mod:`difflab.serve.store`); every request passes the guard first (:mod:`difflab.serve.guard`).
OpenAPI is at ``/openapi.json``; ``/docs`` renders it with difflab's own page (no CDN: FastAPI's
default Swagger page loads its scripts from one, which an offline machine cannot reach).
"""

from __future__ import annotations

import asyncio
import functools
import json
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

import difflab
from difflab.serve.config import ServeConfig
from difflab.serve.guard import COOKIE, Guard, session_value
from difflab.serve.jobs import JobRunner, QueueFull
from difflab.serve.models import load_pipelines, model_info
from difflab.serve.requests import FieldError, JobRequest, UPLOAD_ID, check_request, new_id, read_image
from difflab.serve.store import FINISHED, JobStore
from difflab.settings import SAMPLER_NAMES, SPACINGS

STATIC = Path(__file__).parent / "static"
IMAGE_NAME = r"^[0-9a-f]{32}-[0-9]{1,4}\.(png|gif|mp4|wav)$"
MEDIA_TYPES = {"png": "image/png", "gif": "image/gif", "mp4": "video/mp4", "wav": "audio/wav"}
EVENT_POLL_S = 0.05


def create_app(config: ServeConfig, pipelines: dict | None = None) -> FastAPI:
    """The app for a validated config; ``pipelines`` ({name: Pipeline}) defaults to loading
    ``config.models`` (on the worker thread). The job worker starts here and stops when the app's
    lifespan ends."""
    folders = {name: config.outputs / name for name in ("images", "uploads")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    state = {"store": JobStore(config.outputs / "jobs.sqlite3")}
    load = pipelines if pipelines is not None else functools.partial(load_pipelines, config.models)
    try:  # the worker thread loads the models itself: the thread that runs jobs owns their weights
        state["runner"] = JobRunner(state["store"], load, folders["images"], config.queue_size, config.job_timeout)
    except BaseException:
        state["store"].close()
        raise
    pipelines = state["runner"].pipelines
    models = {name: model_info(name, pipe) for name, pipe in pipelines.items()}

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(state["runner"].stop)
        state["store"].close()

    app = FastAPI(title="difflab", version=difflab.__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Generate, edit and inspect images with difflab's models, and make clips and sounds "
                              "with its video and audio models. Jobs run one at a time per device; results are "
                              "files that carry their recipes (PNG; GIF and MP4; spectrogram PNG and WAV).")
    app.add_middleware(Guard, config=config)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    max_image_bytes = config.max_body_bytes

    def job_view(job_id: str) -> dict:
        job = state["store"].get(job_id) if UPLOAD_ID.match(job_id) else None
        if job is None:
            raise HTTPException(404, f"no job {job_id[:40]!r}")
        return with_live(job)

    def with_live(job: dict) -> dict:
        """A stored job with its live state and progress, while it is queued or running."""
        live = state["runner"].live.get(job["id"])
        if live is not None and job["state"] not in FINISHED:
            job["state"] = live.state
            job["progress"] = {"step": live.step, "total": live.total}
        return job

    @app.exception_handler(FieldError)
    async def field_error(request: Request, error: FieldError):
        return JSONResponse({"detail": [{"loc": ["body", error.field], "msg": str(error), "type": "value_error"}]},
                            status_code=422)

    # ----- pages ----------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return FileResponse(STATIC / "api.html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/login", include_in_schema=False)
    async def login_page():
        return FileResponse(STATIC / "login.html")

    @app.post("/login", include_in_schema=False)
    async def login(token: str = Form("")):
        import hmac
        if config.token is None:
            return RedirectResponse("/", status_code=303)
        if not hmac.compare_digest(token.encode(), config.token.encode()):
            return RedirectResponse("/login?error=1", status_code=303)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, session_value(config.token), httponly=True, samesite="strict")
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout():
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    # ----- API --------------------------------------------------------------------------------------
    @app.get("/api/v1/health", tags=["server"])
    async def health():
        device = str(next(next(iter(pipelines.values())).model.parameters()).device)
        return {"status": "ok", "version": difflab.__version__, "device": device, "queue": state["runner"].counts()}

    @app.get("/api/v1/models", tags=["server"])
    async def list_models():
        return {"models": [dict(info, default=i == 0) for i, info in enumerate(models.values())]}

    @app.get("/api/v1/samplers", tags=["server"])
    async def list_samplers():
        return {"samplers": list(SAMPLER_NAMES), "spacings": list(SPACINGS)}

    @app.post("/api/v1/jobs", status_code=202, tags=["jobs"])
    async def submit(request: JobRequest):
        """Queue a generation; 422 names a bad field, 429 means the queue is full."""
        settings, images = await asyncio.to_thread(check_request, request, models, folders["uploads"], max_image_bytes)
        pipe = pipelines[settings["model"]]
        settings["warnings"] = pipe.vocabulary_warnings([t for t in (request.prompt, request.negative_prompt) if t])
        try:
            job_id = state["runner"].submit(settings, images)
        except QueueFull as error:
            raise HTTPException(429, str(error)) from None
        return {"id": job_id, "state": "queued", "url": f"/api/v1/jobs/{job_id}",
                "events": f"/api/v1/jobs/{job_id}/events"}

    @app.get("/api/v1/jobs", tags=["jobs"])
    async def list_jobs(limit: int = 50):
        limit = max(1, min(limit, config.history))
        return {"jobs": [with_live(job) for job in state["store"].recent(limit)]}

    @app.get("/api/v1/jobs/{job_id}", tags=["jobs"])
    async def get_job(job_id: str):
        return job_view(job_id)

    @app.delete("/api/v1/jobs/{job_id}", tags=["jobs"])
    async def cancel_job(job_id: str):
        """Cancel a queued job now, a running one at its next step (answered once it has stopped, or
        after 5 s with its state then); a finished job is unchanged."""
        job_view(job_id)
        state["runner"].cancel(job_id)
        for _ in range(100):  # a running job stops at its next step: wait for it, up to 5 s
            if job_id not in state["runner"].live:
                break
            await asyncio.sleep(0.05)
        return job_view(job_id)

    @app.get("/api/v1/jobs/{job_id}/events", tags=["jobs"])
    async def job_events(job_id: str, request: Request):
        """Server-sent events: ``state`` (the job, first and on each change) and ``progress``
        (step, total and a small PNG of the current x0 estimate); closes after the job ends."""
        job_view(job_id)
        return StreamingResponse(_events(job_id, request), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def _events(job_id: str, request: Request):
        live = state["runner"].live.get(job_id)  # kept: every step is sent, even after the job ends
        sent, seen, last_state = 0, -1, None
        while live is not None:
            if live.version != seen:
                seen = live.version
                if live.state != last_state and live.state not in FINISHED:
                    last_state = live.state
                    yield _sse("state", job_view(job_id))
                for update in live.steps[sent:]:
                    yield _sse("progress", update)
                sent = len(live.steps)
                if live.state in FINISHED:
                    break
            if await request.is_disconnected():
                return
            await asyncio.sleep(EVENT_POLL_S)
        yield _sse("state", job_view(job_id))

    @app.get("/api/v1/images/{name}", tags=["images"])
    async def get_image(name: str):
        """A result file (with its recipe): ``ID-INDEX.png``, or for a video model's clip ``.gif`` and
        ``.mp4``, for an audio model's sound ``.png`` (its spectrogram) and ``.wav``; names, never paths."""
        import re
        if not re.match(IMAGE_NAME, name) or not state["store"].has_image(name):
            raise HTTPException(404, "no such image")
        path = folders["images"] / name
        if not path.is_file():
            raise HTTPException(404, "no such image")
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix[1:]])

    @app.post("/api/v1/uploads", status_code=201, tags=["images"])
    async def upload(file: UploadFile = File(...)):
        """An image to edit (image-to-image, inpainting, outpainting); returns its id."""
        image = await asyncio.to_thread(read_image, await file.read(), "file")
        upload_id = new_id()
        from difflab.outputs import write_file
        await asyncio.to_thread(write_file, folders["uploads"] / f"{upload_id}.png",
                                lambda f: image.save(f, format="PNG"))
        return {"id": upload_id, "width": image.width, "height": image.height}

    @app.post("/api/v1/recipe", tags=["images"])
    async def recipe(file: UploadFile = File(...)):
        """The recipe stored in a PNG that difflab wrote (A1111's "PNG Info")."""
        return {"recipe": await asyncio.to_thread(_read_recipe, await file.read())}

    return app


def _read_recipe(data: bytes) -> dict:
    import io
    from difflab.pipelines.recipes import read_recipe
    buffer = io.BytesIO(data)
    try:
        return read_recipe(buffer)
    except ValueError as error:
        raise FieldError("file", str(error).replace(f" {buffer}", "")) from None


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
