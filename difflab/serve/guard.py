"""The server's door, checked on every request before any route runs (an ASGI middleware).

In this order, each refusal one JSON line ``{"detail": ...}``:

1. **Host** (403): without a token only loopback names (and ``allowed_hosts``) are accepted, so a
   DNS-rebinding page cannot reach a local server under its own name.
2. **Origin** (403): a browser's cross-origin request (an ``Origin`` that is not this server, or
   ``Sec-Fetch-Site: cross-site``) is refused; so a web page the user visits cannot drive the server
   (ComfyUI's issue #4850). There is no CORS: no other origin is ever allowed.
3. **Size** (413): a body above ``max_body_bytes`` by its ``Content-Length``, or as it streams in.
4. **Token** (401): with a token, API and docs calls need ``Authorization: Bearer TOKEN`` or the
   session cookie that ``POST /login`` sets (HttpOnly, SameSite=Strict); the page redirects to
   ``/login``. Tokens are compared in constant time.

Every response also carries headers that keep the UI from being framed or its content sniffed.
(``Referrer-Policy: same-origin``, not ``no-referrer``: under ``no-referrer`` a browser sends
``Origin: null`` with a plain form POST, and the login form would be refused as cross-origin.)
"""

from __future__ import annotations

import hashlib
import hmac
import json

from difflab.serve.config import LOOPBACK_NAMES, ServeConfig

COOKIE = "difflab_session"
OPEN_PATHS = ("/login", "/static/", "/favicon.ico")
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
                                  b"frame-ancestors 'none'; form-action 'self'"),
]


def session_value(token: str) -> str:
    """The cookie a login sets: derived from the token, so the token itself never sits in the browser."""
    return hmac.new(token.encode(), b"difflab-session", hashlib.sha256).hexdigest()


class Guard:
    def __init__(self, app, config: ServeConfig):
        self.app, self.config = app, config
        self.allowed_hosts = {h.lower() for h in (*LOOPBACK_NAMES, config.host, *config.allowed_hosts)}
        self.session = session_value(config.token) if config.token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            return await _respond(send, *refusal)
        limit, received, answered = self.config.max_body_bytes, 0, False
        secured = _with_security_headers(send)

        async def bounded_receive():  # a body without Content-Length, counted as it streams in
            nonlocal received, answered
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit and not answered:
                answered = True
                await _respond(send, 413, f"the request body is larger than {limit:,} bytes")
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not answered:  # once refused, whatever the app answers to the cut-off body is dropped
                await secured(message)
        await self.app(scope, bounded_receive, guarded_send)

    def _refusal(self, scope, headers: dict):
        host = _hostname(headers.get("host", ""))
        if not self.config.open_host and host not in self.allowed_hosts:
            return 403, f"host {host!r} is not served here (a loopback name is; see --allowed-host)"
        origin = headers.get("origin")
        if origin is not None and origin.rstrip("/") != f"{scope.get('scheme', 'http')}://{headers.get('host', '')}":
            return 403, "cross-origin requests are refused"
        navigation = scope["method"] == "GET" and headers.get("sec-fetch-mode") == "navigate" \
            and not scope["path"].startswith("/api/")
        if headers.get("sec-fetch-site") == "cross-site" and not navigation:
            return 403, "cross-site requests are refused"
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.config.max_body_bytes):
            return 413, f"the request body is larger than {self.config.max_body_bytes:,} bytes"
        if self.session is None or self._authorised(scope, headers):
            return None
        if scope["path"] == "/":
            return 303, "/login"
        return 401, "missing or wrong token: send 'Authorization: Bearer TOKEN' (or log in at /login)"

    def _authorised(self, scope, headers: dict) -> bool:
        path = scope["path"]
        if path.startswith(OPEN_PATHS):
            return True
        bearer = headers.get("authorization", "")
        if bearer[:7].lower() == "bearer " and hmac.compare_digest(bearer[7:].strip().encode(),
                                                                   self.config.token.encode()):
            return True
        cookie = _cookie(headers.get("cookie", ""), COOKIE)
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.session.encode())


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _with_security_headers(send):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
        await send(message)
    return wrapped


async def _respond(send, status: int, detail: str) -> None:
    if status == 303:
        headers, body = [(b"location", detail.encode())], b""
    else:
        headers, body = [(b"content-type", b"application/json")], json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode()), *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})
