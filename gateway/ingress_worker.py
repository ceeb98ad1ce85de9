"""An ingress worker process (`[node] ingress_processes` of them).

Each worker runs the SMTP listeners on the same addresses (SO_REUSEPORT: the
kernel spreads connections), the whole accept path (relay control, AUTH,
plugins' SMTP hooks, MIME parse and lint, DKIM signing, the durable spool
write) and hands each queued message to the queue manager by its queue ID
(gateway/ingress_link.py). Delivery, the admin API, webhooks and the
accounting of outcomes stay in the queue manager, the main process.

Plugins run in every process: their SMTP hooks here, delivery hooks there,
reading the same policy store. In a worker their HTTP routes are not served
and egress changes (caps, suspensions) are ignored: those belong to the
queue manager, where the same plugins set them up too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

from gateway import event_loop
from gateway.accounting import forward_accounting
from gateway.config import Config
from gateway.delivery.egress import SourcePicker
from gateway.delivery.holds import Scope
from gateway.dkim import KeyStore
from gateway.ingress import IngressHandler
from gateway.ingress_link import ManagerLink, RemoteFeedback
from gateway.log import event
from gateway.pipeline import MessagePipeline
from gateway.plugin import Capacity, Handler, PluginContext
from gateway.plugin_host import PluginHost
from gateway.smtp_server import GatewaySMTP, drain_sessions, open_listeners
from gateway.spool import Spool
from gateway.store import open_store
from gateway.tls import ServerTls

SHUTDOWN_GRACE_SECONDS = 30.0
STATS_SECONDS = 1.0


class _NoRoutes:
    """Plugins' HTTP routes are served by the queue manager, not by workers."""

    def add(self, method: str, path: str, handler: Handler) -> None:
        pass


class _WorkerEgress:
    """Egress as a worker sees it: names only; caps and holds are the manager's."""

    def __init__(self, config: Config) -> None:
        self._sources = SourcePicker(config.egress, config.helo_name)

    def source_names(self) -> list[str]:
        return [s.name for s in self._sources.sources]

    def pools(self) -> dict[str, dict[str, int]]:
        return self._sources.pools()

    def set_cap(
        self, source: str, cap: str | Capacity | None, provider: str = "*", name: str = ""
    ) -> None:
        pass

    def suspend(self, scope: Scope, until: float, reason: str) -> None:
        pass

    def resume(self, scope: Scope) -> bool:
        return False


class IngressWorker:
    def __init__(self, config: Config, index: int) -> None:
        self.config = config
        self.index = index
        self.spool = Spool(config.spool_dir, owner=False)
        self.plugins = PluginHost(config)
        self.store = open_store(config.store_settings)
        self.keys = KeyStore(config.dkim)
        self.tls = ServerTls(config.smtp.tls)
        self.pipeline = MessagePipeline(config, self.keys)
        self.link = ManagerLink(config.ingress_socket)
        feedback = RemoteFeedback(config.feedback, config.node.hostname, self.link)
        self.handler = IngressHandler(
            config,
            self.spool,
            self.link.queued,
            self.pipeline,
            self.plugins,
            feedback if feedback.enabled else None,
            self.store,
        )
        self._stop = asyncio.Event()

    def _context(self, name: str) -> PluginContext:
        return PluginContext(
            name=name,
            settings=self.plugins.settings[name],
            store=self.store,
            egress=_WorkerEgress(self.config),
            http=_NoRoutes(),
            admin=_NoRoutes(),
            hostname=self.config.node.hostname,
            public_url=self.config.http.public_url,
            data_dir=str(self.config.node.data_dir),
            emit=self.plugins.all_quiet,
            delivers=False,
        )

    def reload(self) -> None:
        users = self.handler.auth.reload()
        event("reload", keys=self.keys.reload(force=True), tls=self.tls.reload(), users=users)

    async def _report(self) -> None:
        """Tell the manager how many sessions are open here (its /metrics)."""
        while True:
            self.link.stats(inbound=len(GatewaySMTP.sessions))
            await asyncio.sleep(STATS_SECONDS)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self.link.connect()
        if self.config.accounting.enabled:
            forward_accounting(self.link.account)
        await self.plugins.startup({name: self._context(name) for name in self.plugins.names})
        servers = await open_listeners(self.handler, self.config, self.tls.context, reuse_port=True)
        event(
            "worker_started",
            worker=self.index,
            pid=os.getpid(),
            event_loop=event_loop.running_kind(),
        )
        reporter = asyncio.create_task(self._report(), name="worker-stats")
        watcher = asyncio.create_task(
            self.keys.watch(self.config.dkim.reload_interval), name="dkim-key-watch"
        )
        lost = asyncio.create_task(self.link.lost.wait(), name="manager-lost")
        stop = asyncio.create_task(self._stop.wait(), name="stop")
        await asyncio.wait({lost, stop}, return_when=asyncio.FIRST_COMPLETED)
        if lost.done():
            event("worker_orphaned", logging.ERROR, worker=self.index)  # the manager is gone
        for server in servers:
            server.close()
        await drain_sessions(self.handler, SHUTDOWN_GRACE_SECONDS)
        for task in (reporter, watcher, lost, stop):
            task.cancel()
        await self.plugins.all("gateway_shutdown")
        await self.link.close()
        self.pipeline.close()
        self.store.close()
        self.spool.close()
        event("worker_stopped", worker=self.index, at=round(time.time(), 3))


def run_worker(config: Config, index: int) -> None:
    event_loop.run(IngressWorker(config, index).serve(), config.node.event_loop)
