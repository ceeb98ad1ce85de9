"""Per-connection work aiosmtpd repeats that is the same for every connection.

`aiosmtpd.smtp.SMTP.__init__` lists every member of the new session object
and of the handler with `inspect.getmembers` (to find `auth_*` methods),
reads the signature of the handler's `handle_EHLO`, and sorts `dir()` of both
(to find `smtp_*` and `handle_*`), on every connection: 13% and then 5% of an
ingress process's CPU under load (py-spy, BENCHMARKS.md), for answers that
depend only on the classes. `install()` gives aiosmtpd's module an `inspect`
and a `dir` that remember them per class (`dir` gives only the
`smtp_*`/`handle_*` names, of the class and of the object, the only ones
aiosmtpd keeps); everything else is the real `inspect`.
Bound methods are still taken from each object, so behaviour is unchanged.
And aiosmtpd's `sanitized_log`, called twice for every command line, masks
AUTH secrets with a regex before the logger decides whether to log at all;
the installed one asks the logger first.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import aiosmtpd.smtp


class _CachingInspect:
    def __init__(self) -> None:
        self._auth_names: dict[type, list[str]] = {}
        self._signatures: dict[Any, inspect.Signature] = {}

    def getmembers(self, obj: Any) -> list[tuple[str, Any]]:
        # aiosmtpd keeps only the members named auth_*, so only those are listed.
        names = self._auth_names.get(type(obj))
        if names is None:
            names = [name for name, _ in inspect.getmembers(obj) if name.startswith("auth_")]
            self._auth_names[type(obj)] = names
        return [(name, getattr(obj, name)) for name in names]

    def signature(self, obj: Any) -> inspect.Signature:
        function = getattr(obj, "__func__", obj)  # a bound method: its function
        found = self._signatures.get(function)
        if found is None:
            found = self._signatures[function] = inspect.signature(obj)
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)


_class_names: dict[type, list[str]] = {}
_LOOKED_FOR = ("smtp_", "handle_")  # what aiosmtpd.smtp uses dir() to find


def _caching_dir(obj: Any) -> list[str] | tuple[str, ...]:
    """dir(obj) as aiosmtpd uses it: of its class's names (remembered) and its
    own attributes, only those aiosmtpd looks for: it tests each name it is
    given, and a server's class has some 150. An object that names them in
    `aiosmtpd_names` is taken at its word."""
    fixed = getattr(obj, "aiosmtpd_names", None)
    if fixed is not None:
        return fixed  # type: ignore[no-any-return]
    cls = type(obj)
    names = _class_names.get(cls)
    if names is None:
        names = _class_names[cls] = [n for n in dir(cls) if n.startswith(_LOOKED_FOR)]
    own = [name for name in getattr(obj, "__dict__", ()) if name.startswith(_LOOKED_FOR)]
    return sorted(names + own) if own else names


_sanitized_log = aiosmtpd.smtp.sanitized_log
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}


def _quiet_sanitized_log(func: Any, msg: Any, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd logs every command line twice (debug and info), masking AUTH
    secrets with a regex first, whether or not the level is logged: ask first."""
    logger = getattr(func, "__self__", None)
    level = _LEVELS.get(getattr(func, "__name__", ""))
    if isinstance(logger, logging.Logger) and level is not None and not logger.isEnabledFor(level):
        return
    _sanitized_log(func, msg, *args, **kwargs)


def install() -> None:
    if not isinstance(aiosmtpd.smtp.inspect, _CachingInspect):  # type: ignore[attr-defined]
        aiosmtpd.smtp.inspect = _CachingInspect()  # type: ignore[assignment,attr-defined]
        aiosmtpd.smtp.dir = _caching_dir  # type: ignore[attr-defined]
        aiosmtpd.smtp.sanitized_log = _quiet_sanitized_log
