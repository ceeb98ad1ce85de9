"""The HTTP listeners (aiohttp): the public one for endpoints recipients
reach (one-click unsubscribe), and the admin one, behind a bearer token, for
the admin API, /metrics and private plugin endpoints (consent recording).

aiohttp rather than a hand-written server: a maintained HTTP/1.1
implementation with request size limits, keep-alive and graceful shutdown.
Plugins add routes in `gateway_startup`; the listener starts after that.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiohttp import web

from gateway.config import parse_hostport
from gateway.log import event
from gateway.plugin import Handler

# Request bodies the endpoints accept are tiny (a form field, a small JSON record).
MAX_BODY = 64 * 1024


class HttpServer:
    def __init__(
        self,
        listen: str,
        token: str = "",
        open_paths: tuple[str, ...] = (),
        name: str = "http",
        max_body: int = MAX_BODY,
    ) -> None:
        """With `token`, every request but those to `open_paths` needs
        `Authorization: Bearer TOKEN` (compared in constant time)."""
        self._listen = listen
        self._name = name
        middlewares = [_token_auth(token, open_paths)] if token else []
        self.app = web.Application(client_max_size=max_body, middlewares=middlewares)
        self._runner: web.AppRunner | None = None

    def add(self, method: str, path: str, handler: Handler) -> None:
        self.app.router.add_route(method, path, handler)

    async def start(self) -> None:
        if not self._listen or not self.app.router.routes():
            return
        host, port = parse_hostport(self._listen, 8025)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        event(f"{self._name}_listening", address=f"{host}:{port}")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _token_auth(token: str, open_paths: tuple[str, ...]) -> Any:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path not in open_paths:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return web.json_response(
                    {"error": "an admin token is needed: Authorization: Bearer TOKEN"},
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        response: web.StreamResponse = await handler(request)
        return response

    return check


async def csv_response(request: web.Request, chunks: Iterable[str]) -> web.StreamResponse:
    """Stream CSV text to the client chunk by chunk (exports of any size)."""
    response = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8"})
    await response.prepare(request)
    for chunk in chunks:
        await response.write(chunk.encode())
    await response.write_eof()
    return response


async def request_lines(request: web.Request) -> AsyncIterator[str]:
    """The request body as text lines, read as they arrive (imports of any size)."""
    async for raw in request.content:
        yield raw.decode("utf-8", "replace")
