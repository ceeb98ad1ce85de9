"""Deliverability Gateway: an outbound SMTP relay that enforces deliverability policy.

The names below are the public API for plugins (see docs/plugins.md); a
plugin imports nothing else from `gateway`.
"""

from gateway._core import __version__
from gateway.config import ConfigError, Duration, load_config
from gateway.plugin import (
    Capacity,
    Decision,
    Delivery,
    Destination,
    Egress,
    EnvelopeInfo,
    HttpRoutes,
    MessageInfo,
    PluginContext,
    PluginSettings,
    Route,
    Scope,
    SessionInfo,
    hookimpl,
)
from gateway.store import PolicyStore, open_store

__all__ = [
    "Capacity",
    "ConfigError",
    "Decision",
    "Delivery",
    "Destination",
    "Duration",
    "Egress",
    "EnvelopeInfo",
    "HttpRoutes",
    "MessageInfo",
    "PluginContext",
    "PluginSettings",
    "PolicyStore",
    "Route",
    "Scope",
    "SessionInfo",
    "__version__",
    "hookimpl",
    "load_config",
    "open_store",
]
