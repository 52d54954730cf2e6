"""``ServeConfig``: what ``difflab serve`` was asked for, checked before anything loads (torch-free).

The server binds to 127.0.0.1 by default. Binding anywhere else needs a token (every API call then
carries ``Authorization: Bearer TOKEN``; the browser logs in once and gets a cookie) or an explicit
``insecure=True``, which the command line warns about: a server that anyone on the network can drive
is what ComfyUI's tracker has asked to fix since 2023 (its issue #987).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from difflab.outputs import check_output_folder
from difflab.settings import package_folder

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
TOKEN_CHARS = re.compile(r"^[\x21-\x7e]{16,512}$")


@dataclass
class ServeConfig:
    """Settings of one server; :meth:`validate` checks them all and returns the config."""

    outputs: Path = Path("outputs/serve")
    models: list = field(default_factory=lambda: [None])   # package folders; None = the bundled model
    host: str = "127.0.0.1"
    port: int = 7860
    token: str | None = None
    insecure: bool = False
    queue_size: int = 32            # jobs waiting (the running one not counted); more get 429
    job_timeout: float = 600.0      # seconds one job may run before it is stopped
    max_body_bytes: int = 16 << 20  # one request's body (an upload, a JSON with base64 images)
    history: int = 1000             # jobs kept listed by GET /api/v1/jobs (results stay on disk)
    allowed_hosts: list = field(default_factory=list)  # extra Host names accepted without a token

    def validate(self) -> "ServeConfig":
        self.outputs = check_output_folder(self.outputs, "--outputs")
        if not self.models:
            raise ValueError("serve needs at least one model (--model FOLDER, or none for the bundled model)")
        self.models = [None if m is None else package_folder(m) for m in self.models]
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be an integer in [0, 65535] (0: any free port), got {self.port!r}")
        if self.token is not None and not TOKEN_CHARS.match(self.token):
            raise ValueError("--token must be 16 to 512 printable ASCII characters without spaces "
                             "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')")
        if not is_loopback(self.host) and self.token is None and not self.insecure:
            raise ValueError(f"--host {self.host} lets other machines reach the server: give --token TOKEN "
                             f"(or --insecure to serve without one)")
        for name, value, low in (("--queue-size", self.queue_size, 1), ("--max-body-bytes", self.max_body_bytes, 1024),
                                 ("history", self.history, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(self.job_timeout, (int, float)) and 0 < self.job_timeout < float("inf")):
            raise ValueError(f"--job-timeout must be a positive number of seconds, got {self.job_timeout!r}")
        return self

    @property
    def open_host(self) -> bool:
        """Whether Host headers other than loopback names are accepted (a token guards the server)."""
        return self.token is not None or self.insecure


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
