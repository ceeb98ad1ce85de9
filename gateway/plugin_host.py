"""Finds, configures and calls plugins.

pluggy keeps the registry and the call order (`order` first, then by name;
tryfirst/trylast as pluggy has them). pluggy does not await, so hooks are
called here: implementations in pluggy's order, async ones awaited under the
plugin's timeout, each call guarded so a plugin's exception or timeout is
logged and counted and never reaches the session or the message.

`GATEWAY_TRACE_HOOKS=1` logs every call: hook, plugin, result, duration.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import Coroutine
from importlib.metadata import entry_points
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from gateway import hookspecs
from gateway.config import Config, ConfigError, describe_errors
from gateway.log import event
from gateway.metrics import (
    PLUGIN_CALLS_FAILED,
    PLUGIN_DECISIONS,
    PLUGIN_HOOK_SECONDS,
    BatchedObserver,
)
from gateway.plugin import Decision, PluginContext
from gateway.store import StoreUnavailable

ENTRY_POINT_GROUP = "gateway"
TRACE_ENV = "GATEWAY_TRACE_HOOKS"


def discover() -> dict[str, Any]:
    """Every plugin installed under the entry-point group, by name."""
    found: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[ep.name] = ep.load()
        except Exception as exc:
            raise ConfigError(f"plugin {ep.name!r} ({ep.value}) cannot be loaded: {exc}") from exc
    return found


class PluginHost:
    def __init__(self, config: Config, plugins: dict[str, Any] | None = None) -> None:
        """`plugins` (name -> module or object) replaces discovery, for tests."""
        self._config = config.plugins
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        available = discover() if plugins is None else plugins
        wanted = self._config.enabled or sorted(available)
        unknown = [n for n in [*wanted, *self._config.order] if n not in available]
        if unknown:
            raise ConfigError(
                f"plugins: not installed: {', '.join(unknown)} "
                f"(installed: {', '.join(sorted(available)) or 'none'})"
            )
        names = [n for n in wanted if n not in self._config.disabled]
        first = [n for n in self._config.order if n in names]
        ordered = first + sorted(n for n in names if n not in first)
        # pluggy calls the last registered first: register in reverse.
        for name in reversed(ordered):
            self.pm.register(available[name], name=name)
        self.names = ordered
        self.settings = {name: self._settings(name, available[name], config) for name in ordered}
        stray = sorted(set(config.plugin) - set(ordered))
        if stray:
            raise ConfigError(f"[plugin.{stray[0]}]: no such plugin is enabled")
        self._trace = os.environ.get(TRACE_ENV, "") not in ("", "0")
        self._impl_cache: dict[str, list[pluggy.HookImpl]] = {}
        self._hook_seconds: dict[tuple[str, str], BatchedObserver] = {}

    def register_internal(self, plugin: object, name: str) -> None:
        """A part of the gateway itself that listens to hooks (not configurable)."""
        self.pm.register(plugin, name=name)
        self._impl_cache.clear()

    @staticmethod
    def _settings(name: str, plugin: Any, config: Config) -> Any:
        model = getattr(plugin, "Settings", None)
        values = config.plugin.get(name, {})
        if model is None:
            if values:
                raise ConfigError(f"[plugin.{name}]: this plugin takes no settings")
            return None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigError(f"plugin {name}: Settings must be a pydantic model")
        try:
            return model.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc, prefix=f"plugin.{name}.")) from None

    def _timeout(self, plugin: str) -> float:
        return self._config.timeouts.get(plugin, self._config.timeout)

    def _impls(self, hook: str) -> list[pluggy.HookImpl]:
        # Several calls per message: pluggy copies its list on every ask.
        found = self._impl_cache.get(hook)
        if found is None:
            found = list(reversed(getattr(self.pm.hook, hook).get_hookimpls()))
            self._impl_cache[hook] = found
        return found

    def has(self, hook: str) -> bool:
        return bool(self._impls(hook))

    # -- calling ---------------------------------------------------------------

    async def _call(
        self, hook: str, impl: pluggy.HookImpl, kwargs: dict[str, Any]
    ) -> tuple[str, Any]:
        """("ok", result), or ("error" | "timeout" | "unavailable", None) once logged
        and counted ("unavailable": the policy store cannot be reached)."""
        started = time.perf_counter()
        status, result = self._invoke(hook, impl, kwargs)
        if status != "ok":
            return status, None
        return await self._settle(hook, impl.plugin_name, result, started)

    def _invoke(self, hook: str, impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> tuple[str, Any]:
        """One implementation called with the arguments it names: ("ok", what
        it returned, awaitable or not), or its failure's status, logged."""
        try:
            return "ok", impl.function(**{k: kwargs[k] for k in impl.argnames})
        except Exception as exc:
            return self._failure(hook, impl.plugin_name, exc), None

    async def _settle(self, hook: str, plugin: str, result: Any, started: float) -> tuple[str, Any]:
        """A call's result, awaited under the plugin's timeout when it is awaitable."""
        if inspect.isawaitable(result):
            try:
                # asyncio.timeout, not wait_for: no task per call.
                async with asyncio.timeout(self._timeout(plugin)):
                    result = await result
            except Exception as exc:
                return self._failure(hook, plugin, exc), None
        self._traced(hook, plugin, result, started)
        return "ok", result

    def _failure(self, hook: str, plugin: str, exc: Exception) -> str:
        """A call that raised, logged and counted: its status for _call."""
        if isinstance(exc, TimeoutError):
            timeout = self._timeout(plugin)
            self._failed(hook, plugin, "timeout", f"no answer within {timeout} s")
            return "timeout"
        if isinstance(exc, StoreUnavailable):
            self._failed(hook, plugin, "store_unavailable", str(exc))
            return "unavailable"
        self._failed(hook, plugin, "error", repr(exc), exc_info=True)
        return "error"

    def _call_sync(
        self, hook: str, impl: pluggy.HookImpl, kwargs: dict[str, Any]
    ) -> tuple[str, Any]:
        started = time.perf_counter()
        try:
            result = impl.function(**{k: kwargs[k] for k in impl.argnames})
        except Exception as exc:
            self._failed(hook, impl.plugin_name, "error", repr(exc), exc_info=True)
            return "error", None
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            self._failed(hook, impl.plugin_name, "error", f"{hook} must not be async")
            return "error", None
        self._traced(hook, impl.plugin_name, result, started)
        return "ok", result

    def _failed(
        self, hook: str, plugin: str, kind: str, detail: str, exc_info: bool = False
    ) -> None:
        PLUGIN_CALLS_FAILED.labels(plugin, hook, kind).inc()
        event(
            "plugin_error", logging.ERROR, exc=exc_info, plugin=plugin, hook=hook, kind=kind,
            error=detail,
        )  # fmt: skip

    def _traced(self, hook: str, plugin: str, result: Any, started: float) -> None:
        """A call that returned: timed, decisions counted, traced when asked."""
        elapsed = time.perf_counter() - started
        timer = self._hook_seconds.get((plugin, hook))
        if timer is None:  # labels() is a lookup under a lock
            timer = BatchedObserver(PLUGIN_HOOK_SECONDS.labels(plugin, hook))
            self._hook_seconds[(plugin, hook)] = timer
        timer.observe(elapsed)
        if isinstance(result, Decision):
            PLUGIN_DECISIONS.labels(plugin, hook, result.action).inc()
        if self._trace:
            event(
                "hook_call",
                hook=hook,
                plugin=plugin,
                result=repr(result)[:200],
                ms=round(elapsed * 1000, 3),
            )

    async def first(self, hook: str, **kwargs: Any) -> Any:
        """First-decision hook: the first result that is not None (None if none).
        For SMTP decisions a plugin that timed out answers 451 4.3.0."""
        for impl in self._impls(hook):
            status, result = await self._call(hook, impl, kwargs)
            if status == "timeout" and hook.startswith("smtp_"):
                return Decision.defer("Policy check timed out; try again later", status="4.3.0")
            if status == "unavailable" and hook.startswith("smtp_"):
                # The policy state is unreachable: fail closed, the client retries.
                return Decision.defer("Policy state unavailable; try again later", status="4.3.0")
            if result is not None:
                return result
        return None

    def first_sync(self, hook: str, **kwargs: Any) -> Any:
        """First-decision hook on the delivery path: no awaiting."""
        for impl in self._impls(hook):
            _, result = self._call_sync(hook, impl, kwargs)
            if result is not None:
                return result
        return None

    async def all(self, hook: str, **kwargs: Any) -> list[Any]:
        """All-run hook: every result that is not None, in plugin order."""
        results = []
        for impl in self._impls(hook):
            _, result = await self._call(hook, impl, kwargs)
            if result is not None:
                results.append(result)
        return results

    async def startup(self, contexts: dict[str, PluginContext]) -> None:
        """gateway_startup, each plugin with its own context. A plugin that cannot
        start stops the gateway: running without its policy would be worse."""
        for impl in self._impls("gateway_startup"):
            name = impl.plugin_name
            args = {"context": contexts[name]} if "context" in impl.argnames else {}
            try:
                result = impl.function(**args)
                if inspect.isawaitable(result):
                    await asyncio.wait_for(result, self._timeout(name))
            except Exception as exc:
                raise ConfigError(f"plugin {name} failed to start: {exc!r}") from exc

    async def all_quiet(self, hook: str, **kwargs: Any) -> None:
        """All-run hook whose results nobody reads (outcome notifications)."""
        await self.all(hook, **kwargs)

    def notify(self, hook: str, **kwargs: Any) -> Coroutine[Any, Any, None] | None:
        """All-run hook whose results nobody reads, from code that must not
        wait for plugins (delivery outcomes): synchronous implementations run
        now, in order; the async ones' coroutines come back as one to run
        beside the caller (None when there are none). A task per
        notification would cost more than most implementations."""
        later: list[tuple[str, Any]] = []
        for impl in self._impls(hook):
            started = time.perf_counter()
            status, result = self._invoke(hook, impl, kwargs)
            if status != "ok":
                continue
            if inspect.isawaitable(result):
                later.append((impl.plugin_name, result))
            else:
                self._traced(hook, impl.plugin_name, result, started)
        return self._settle_all(hook, later) if later else None

    async def _settle_all(self, hook: str, calls: list[tuple[str, Any]]) -> None:
        for plugin, result in calls:
            await self._settle(hook, plugin, result, time.perf_counter())

    def all_sync(self, hook: str, **kwargs: Any) -> None:
        for impl in self._impls(hook):
            self._call_sync(hook, impl, kwargs)
