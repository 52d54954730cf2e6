"""Running the app: ``run`` (the command line's ``difflab serve``) and ``background_server`` (tests,
benchmarks, scripts: a real uvicorn server on a free loopback port, in a thread)."""

from __future__ import annotations

import contextlib
import threading
import time

from difflab.serve.config import ServeConfig


def run(config: ServeConfig, log=print) -> None:
    """Serve until interrupted (Ctrl+C stops the running job at its next step and records it)."""
    import uvicorn

    from difflab.serve.app import create_app
    app = create_app(config.validate())
    shown = f"[{config.host}]" if ":" in config.host else config.host
    log(f"difflab serve: http://{shown}:{config.port}/ (API docs at /docs; outputs in {config.outputs})")
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=5)


@contextlib.contextmanager
def background_server(config: ServeConfig, pipelines: dict | None = None, startup_timeout: float = 60.0):
    """A real server in a thread for the block; yields its base URL (``http://127.0.0.1:PORT``)."""
    import uvicorn

    from difflab.serve.app import create_app
    config.port = config.port if config.port != 7860 else 0
    app = create_app(config.validate(), pipelines)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, name="difflab-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{config.host}:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
