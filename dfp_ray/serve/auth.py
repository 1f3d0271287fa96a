"""Optional bearer-token auth as ASGI middleware.

When a token is configured every request but ``GET /healthz`` must carry
``Authorization: Bearer <token>``: none (or another scheme) is a 401 with
``WWW-Authenticate: Bearer``, a wrong token a 403. Checked before the body is read, so an
unauthenticated client cannot make the server store an upload. Tokens are compared in
constant time. Middleware rather than a FastAPI dependency so that ``/docs`` and
``/openapi.json`` are covered too.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = frozenset({"/healthz"})


def route_path(scope: Scope) -> str:
    """The path inside the application (Serve mounts it under its route prefix, the ASGI root_path)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


class BearerAuth:
    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http" or route_path(scope) in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value
                break
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            await _reply(send, 401, "this server requires a token: send the header 'Authorization: Bearer <token>'",
                         "missing_token", [(b"www-authenticate", b'Bearer realm="dfp_ray"')])
            return
        if not hmac.compare_digest(given.strip(), self.token):
            await _reply(send, 403, "the bearer token is not valid for this server", "invalid_token", [])
            return
        await self.app(scope, receive, send)


async def _reply(send: Send, status: int, detail: str, code: str, extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"detail": detail, "field": "Authorization", "code": code}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
