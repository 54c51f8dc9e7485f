"""The server's guard, applied once to every request before any route sees it (an ASGI middleware).

Local Stable Diffusion servers have shipped the same holes again and again: any web page could POST
to 127.0.0.1 (CSRF), a DNS-rebinding page could read it, anyone on the network could use it, and
huge bodies could exhaust memory. In order, for every HTTP (and websocket) request:

1. Host: the `Host` header must name an allowed host (loopback names by default), which defeats DNS
   rebinding: the attacker's page arrives with its own host name.
2. Auth: with credentials configured, HTTP Basic credentials must match one pair (compared in
   constant time); otherwise 401 with a `WWW-Authenticate` challenge.
3. Origin: a request that carries an `Origin` must come from this server's own origin or an allowed
   one; `Origin: null` is refused. Browsers send Origin on every cross-origin fetch (and on same-origin
   ones that can change state), so no other page can change state or read a response, whatever CORS
   headers a route (gradio's) would answer with. An allowed origin's preflight passes. Clients that are
   not browsers send no Origin and pass.
4. Size: a body larger than `max_body` bytes is refused with 413, whether it says so in
   `Content-Length` or streams without one.
5. Closed routes: paths under `closed_paths` (routes a mounted app serves that sdlab does not use, such
   as gradio's monitoring and dev-reload routes) are answered 404.

A header these rules read (Host, Origin, Authorization, Content-Length) that appears twice is refused
with 400: the guard and the routes behind it must read the same one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class Guard:
    """ASGI middleware enforcing the rules above.

    `allowed_hosts` None allows any Host (only sensible with credentials, e.g. behind `--listen`);
    `credentials` is a list of (user, password) pairs, or empty for no auth.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Iterable[str] | None = LOOPBACK_HOSTS,
        allowed_origins: Iterable[str] = (),
        credentials: Iterable[tuple[str, str]] = (),
        max_body: int = 32 * 2**20,
        closed_paths: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.allowed_hosts = None if allowed_hosts is None else {h.lower().strip("[]") for h in allowed_hosts}
        self.allowed_origins = {o.rstrip("/").lower() for o in allowed_origins}
        # digests: compare_digest is constant-time only for equal lengths, so lengths must not differ
        self.credentials = [(_digest(u.encode()), _digest(p.encode())) for u, p in credentials]
        self.max_body = max_body
        self.closed_paths = tuple(closed_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        names = [k.decode("latin-1").lower() for k, _ in scope["headers"]]
        repeated = next((n for n in _SINGLE_HEADERS if names.count(n) > 1), None)
        if (
            repeated is not None
        ):  # this guard and Starlette/gradio must read the same one: refuse the ambiguity
            await _respond(
                scope, send, 400, f"the request repeats its {repeated.title()} header; send it once", {}
            )
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method = (
            scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        )  # a socket changes state
        refusal = self._refusal(headers, method) or self._closed(scope.get("path", ""))
        if refusal is not None:
            status, message, extra = refusal
            await _respond(scope, send, status, message, extra)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return

        # the body is read here, whole and bounded, so no route ever sees more than max_body bytes
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _respond(scope, send, 413, self._too_large(), {})
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    def _refusal(self, headers: dict[str, str], method: str) -> tuple[int, str, dict[str, str]] | None:
        host = _hostname(headers.get("host", ""))
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            return 403, f"the Host header {headers.get('host', '')!r} is not one this server answers to", {}
        origin = headers.get("origin")
        preflight = method == "OPTIONS" and (origin or "").rstrip("/").lower() in self.allowed_origins
        if self.credentials and not preflight and not self._authorized(headers.get("authorization", "")):
            return (
                401,
                "this server needs a user name and password (HTTP Basic)",
                {"www-authenticate": 'Basic realm="sdlab"'},
            )
        if origin is not None and not preflight:
            own = {f"{scheme}://{headers.get('host', '')}".lower() for scheme in ("http", "https")}
            if origin.lower() == "null" or origin.rstrip("/").lower() not in own | self.allowed_origins:
                return 403, f"requests from the web page at origin {origin!r} are not allowed", {}
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return 413, self._too_large(), {}
        return None

    def _closed(self, path: str) -> tuple[int, str, dict[str, str]] | None:
        for closed in self.closed_paths:
            if path == closed or path.startswith(closed.rstrip("/") + "/"):
                return 404, f"{path} is not served here", {}
        return None

    def _authorized(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        ok = False
        for u, p in self.credentials:  # every pair is compared, in constant time, whatever matches
            ok |= (
                bool(sep)
                & secrets.compare_digest(_digest(user), u)
                & secrets.compare_digest(_digest(password), p)
            )
        return ok

    def _too_large(self) -> str:
        return f"the request body is larger than the server's limit of {self.max_body / 2**20:g} MiB"


def parse_credentials(text: str) -> list[tuple[str, str]]:
    """ "user:pass[,user2:pass2]" (A1111's --api-auth) -> pairs; ValueError names what is wrong,
    never the secret itself."""
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError(
                "--api-auth must be USER:PASSWORD (several separated by commas), each part non-empty"
            )
        pairs.append((user, password))
    return pairs


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


_SINGLE_HEADERS = ("host", "origin", "authorization", "content-length")  # repeated: refused


def _hostname(host: str) -> str:
    """ "127.0.0.1:7860" -> "127.0.0.1"; "[::1]:7860" -> "::1"; lower case. A Host with user information
    ("evil@localhost") names no host: it matches none."""
    host = host.strip().lower()
    if "@" in host:
        return ""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return urlsplit(f"//{host}").hostname or host.partition(":")[0]


async def _respond(scope: Scope, send: Send, status: int, message: str, extra: dict[str, str]) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    body = json.dumps({"error": _REASONS.get(status, "Error"), "detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_REASONS = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 413: "Payload Too Large"}
