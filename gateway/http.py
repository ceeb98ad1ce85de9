"""The HTTP listener (aiohttp): plugin endpoints (one-click unsubscribe,
consent recording) and /metrics; the admin API of issue 7 will join it.

aiohttp rather than a hand-written server: a maintained HTTP/1.1
implementation with request size limits, keep-alive and graceful shutdown.
Plugins add routes in `gateway_startup`; the listener starts after that.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.config import parse_hostport
from gateway.log import event
from gateway.plugin import Handler

# Request bodies the endpoints accept are tiny (a form field, a small JSON record).
MAX_BODY = 64 * 1024


class HttpServer:
    def __init__(self, listen: str) -> None:
        self._listen = listen
        self.app = web.Application(client_max_size=MAX_BODY)
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
        event("http_listening", address=f"{host}:{port}")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def metrics_page(request: web.Request) -> web.Response:
    """Prometheus exposition of the gateway's metrics (issue 7 adds the rest)."""
    response = web.Response(body=generate_latest())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
