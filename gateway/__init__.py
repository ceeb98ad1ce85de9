"""Deliverability Gateway: an outbound SMTP relay that enforces deliverability policy.

The names below are the public API for plugins (see docs/plugins.md); a
plugin imports nothing else from `gateway`.
"""

from gateway import plugin
from gateway._core import __version__
from gateway.config import ConfigError, Duration, load_config
from gateway.http import csv_response, request_lines
from gateway.plugin import *  # noqa: F403  (the plugin API: its __all__)
from gateway.store import PolicyStore, StoreUnavailable, open_store
from gateway.store.csv_io import export_csv, import_csv

__all__ = [
    *plugin.__all__,
    "ConfigError",
    "Duration",
    "PolicyStore",
    "StoreUnavailable",
    "__version__",
    "csv_response",
    "export_csv",
    "import_csv",
    "load_config",
    "open_store",
    "request_lines",
]
