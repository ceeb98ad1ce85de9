"""The running gateway: spool recovery, ingress listeners, delivery, signals."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from gateway import __version__, event_loop
from gateway.accounting import account_received, close_accounting, open_accounting
from gateway.admin import add_routes as add_admin_routes
from gateway.admin import admin_token
from gateway.auth import UsersFileError
from gateway.config import Config
from gateway.delivery.engine import DeliveryEngine
from gateway.delivery.mta_sts import MtaSts
from gateway.delivery.resolver import MxResolver
from gateway.delivery.smtp_client import verifying_context
from gateway.dkim import KeyStore
from gateway.domain_check import egress_warnings
from gateway.feedback.processor import FeedbackLoop
from gateway.http import HttpServer
from gateway.ingress import IngressHandler
from gateway.ingress_link import IngressBridge
from gateway.log import event
from gateway.node_identity import node_id
from gateway.periodic import Periodic
from gateway.pipeline import MessagePipeline
from gateway.plugin import PluginContext
from gateway.plugin_host import PluginHost
from gateway.smtp_server import GatewaySMTP, drain_sessions, open_listeners
from gateway.spool import Envelope, Location, Spool, SpooledMessage
from gateway.state_metrics import StateCollector
from gateway.store import open_store
from gateway.suspensions import HoldKeeper
from gateway.tls import ServerTls
from gateway.webhooks import Webhooks
from gateway.worker_metrics import exposition
from gateway.worker_metrics import reset as reset_metrics
from gateway.workers import Workers

SHUTDOWN_GRACE_SECONDS = 30.0


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.spool = Spool(config.spool_dir)
        self.plugins = PluginHost(config)
        self.store = open_store(config.store_settings)
        self.http = HttpServer(config.http.listen)
        self.admin = HttpServer(
            config.admin.listen,
            token=admin_token(config),
            open_paths=() if config.admin.metrics_need_token else ("/metrics",),
            name="admin",
            max_body=config.smtp.max_message_size,  # injected messages
        )
        resolver = MxResolver(config.dns)
        self.engine = DeliveryEngine(config, self.spool, resolver, self.plugins)
        self.keeper = HoldKeeper(self.engine, self.store)
        # Removes finished segments; finds messages whose notice was lost.
        self.spool_collector = Periodic("spool-collect", 1.0, self._collect_spool)
        self.engine.mta_sts = MtaSts(
            config.mta_sts, resolver, self.store, verifying_context(config.delivery.ca_file)
        )
        self.feedback = FeedbackLoop(
            config.feedback, config.node.hostname, self.store, self.plugins, self.keeper
        )
        self.plugins.register_internal(self.feedback, "core.feedback")
        # In a fleet each node keeps its own backlog in the shared store.
        node = node_id(config.node.data_dir) if config.store.shared else ""
        self.webhooks = Webhooks(config.webhooks, self.store, node)
        if config.webhooks:
            self.plugins.register_internal(self.webhooks, "core.webhooks")
        self.engine.envelope_sender = self.feedback.envelope_sender
        self.keys = KeyStore(config.dkim)
        self.tls = ServerTls(config.smtp.tls)
        self.pipeline = MessagePipeline(config, self.keys)
        self.handler = IngressHandler(
            config,
            self.spool,
            self._received,
            self.pipeline,
            self.plugins,
            self.feedback if self.feedback.enabled else None,
            self.store,
        )
        self._servers: list[asyncio.Server] = []
        # With ingress_processes, workers take SMTP and this process is the
        # queue manager: it delivers, and schedules what workers queued.
        self.metrics_dir = config.node.data_dir / "metrics"
        self.workers = Workers(config, self.metrics_dir) if config.node.ingress_processes else None
        self.bridge = IngressBridge(
            config.ingress_socket, self._queued_by_worker, self.feedback.receive
        )
        self._background: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def _received(self, message: SpooledMessage, dkim: list[str]) -> None:
        self.engine.submit(message)
        account_received(message.envelope, dkim)

    async def _queued_by_worker(
        self, qid: str, envelope: dict[str, Any], location: Location | None, dkim: list[str]
    ) -> None:
        """A worker spooled a message (`envelope`: its spool header, so it need
        not be read back; a fresh message has no journal yet)."""
        try:
            spooled = Envelope(**envelope)
            if location is not None and not self.spool.adopt(qid, location):
                # Already found in its segment by the spool's collect.
                account_received(spooled, dkim)
                return
            self._received(SpooledMessage.fresh(spooled, location), dkim)
        except (ValueError, KeyError, TypeError) as exc:
            event("worker_queued_unreadable", logging.ERROR, qid=qid, error=str(exc))

    async def _collect_spool(self) -> None:
        for message in await self.spool.collect():
            event("spool_found", qid=message.qid)  # stored, but its notice was lost
            self.engine.submit(message)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = exposition(self.metrics_dir) if self.workers else generate_latest()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _context(self, name: str) -> PluginContext:
        return PluginContext(
            name=name,
            settings=self.plugins.settings[name],
            store=self.store,
            egress=self.engine,
            http=self.http,
            admin=self.admin,
            hostname=self.config.node.hostname,
            public_url=self.config.http.public_url,
            data_dir=str(self.config.node.data_dir),
            emit=self.plugins.all_quiet,
        )

    async def start(self) -> None:
        open_accounting(self.config.accounting, self.config.node.data_dir)
        await self.plugins.startup({name: self._context(name) for name in self.plugins.names})
        self._collector = StateCollector(
            self.engine, lambda: len(GatewaySMTP.sessions) + self.bridge.inbound, self.store
        )
        REGISTRY.register(self._collector)
        self.admin.add("GET", "/metrics", self._metrics)
        add_admin_routes(self.admin, self.engine, self.keeper, self.handler)
        await self.http.start()
        await self.admin.start()
        restored = self.keeper.restore()
        self.feedback.sent.start()
        self.feedback.complaints.start()
        self.webhooks.start()
        self._background = asyncio.create_task(self._check_egress(), name="egress-check")
        self.keeper.start()
        recovered = 0
        for message in self.spool.recover():
            if message.done:
                await self.spool.remove(message.qid)
                continue
            self.engine.submit(message)
            recovered += 1
        self.spool_collector.start()
        if self.workers is not None:
            reset_metrics(self.metrics_dir)
            await self.bridge.start()
            self.workers.start()  # they listen once their plugins have started
        else:
            self._servers = await open_listeners(self.handler, self.config, self.tls.context)
        event(
            "started",
            version=__version__,
            hostname=self.config.node.hostname,
            spool=str(self.spool.root),
            recovered=recovered,
            plugins=self.plugins.names,
            holds_restored=restored,
            event_loop=event_loop.running_kind(),
        )

    async def _check_egress(self) -> None:
        """Warn about egress addresses whose reverse DNS receivers will not accept."""
        try:
            problems = await asyncio.to_thread(egress_warnings, self.config)
        except Exception as exc:  # DNS trouble at start must not stop the gateway
            event("egress_check_failed", logging.WARNING, error=repr(exc))
            return
        for finding in problems:
            event("egress_dns", logging.WARNING, check=finding.check, detail=finding.detail)

    def reload(self) -> None:
        """SIGHUP: reload the DKIM keys, the TLS certificate and the users file.
        One that fails to load is logged and the one in use stays."""
        users = None
        try:
            users = self.handler.auth.reload()
        except (OSError, UsersFileError) as exc:
            event("reload_failed", logging.ERROR, what="users_file", error=str(exc))
        event("reload", keys=self.keys.reload(force=True), tls=self.tls.reload(), users=users)
        if self.workers is not None:
            self.workers.signal(signal.SIGHUP)  # they sign and terminate TLS

    def request_stop(self) -> None:
        self._stop.set()

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT, then shut down cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self.start()
        delivery = asyncio.create_task(self.engine.run(), name="delivery")
        watcher = asyncio.create_task(
            self.keys.watch(self.config.dkim.reload_interval), name="dkim-key-watch"
        )
        await self._stop.wait()
        event("stopping", queued=self.engine.queued_messages)
        for server in self._servers:
            server.close()  # stop accepting; open sessions continue
        if self.workers is not None:
            await self.workers.stop(SHUTDOWN_GRACE_SECONDS)  # they finish their sessions
            await self.bridge.stop()
        await drain_sessions(self.handler, SHUTDOWN_GRACE_SECONDS)
        await self.engine.stop(SHUTDOWN_GRACE_SECONDS)
        delivery.cancel()
        watcher.cancel()
        await asyncio.gather(delivery, watcher, return_exceptions=True)
        if self._background:
            self._background.cancel()
        await self.keeper.stop()
        await self.spool_collector.stop()
        await self.feedback.sent.stop()
        await self.feedback.complaints.stop()
        await self.webhooks.stop()
        await self.plugins.all("gateway_shutdown")
        await self.http.stop()
        await self.admin.stop()
        REGISTRY.unregister(self._collector)
        self.pipeline.close()
        self.store.close()
        self.spool.close()
        close_accounting()
        event("stopped", logging.INFO, queued=self.engine.queued_messages)


def run(config: Config) -> None:
    event_loop.run(Gateway(config).serve(), config.node.event_loop)
