"""SMTP AUTH: who may log in, and what their mail counts as.

Credentials come from plugins (the `smtp_auth` hook, for an external user
store) and then from the users file: lines `user:hash[:tenant[:stream]]`,
the hash argon2id (argon2-cffi: the maintained binding of the reference
implementation, salted, memory-hard). Verifying costs ~100 ms of CPU, so it
runs in a thread, and a login that passed is remembered for `cache_seconds`
by a keyed digest of the password (applications log in once per message).

Failed logins are counted per client IP; past `max_failures` within
`failure_window` the IP is refused until its failures age out. The counts
are the policy store's too (one record per IP and 1/15 of the window), so
every ingress process and, on Redis, every node refuses an IP that failed
anywhere: spreading guesses over workers or nodes gains nothing. Without
the store each process counts alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import secrets
import time
from collections import deque
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from gateway.config import SmtpAuthConfig
from gateway.log import event
from gateway.metrics import AUTH_ATTEMPTS
from gateway.plugin import Decision, Login, SessionInfo
from gateway.plugin_host import PluginHost
from gateway.secret_files import warn_if_exposed
from gateway.store import PolicyStore, StoreUnavailable

_hasher = PasswordHasher()
MAX_TRACKED_IPS = 100_000  # failure records kept; the oldest go first
FAILURES = "auth-failures"  # the store's namespace: "ip|bucket" -> {"n": failures}
BUCKETS = 15  # the window in this many buckets


class UsersFileError(Exception):
    """The users file cannot be read; names the line."""


class AuthUnavailable(Exception):
    """Credentials could not be checked now (a plugin timed out): 454, not 535."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def read_users(path: Path) -> dict[str, tuple[str, Login]]:
    """user -> (hash, Login) from a users file."""
    users: dict[str, tuple[str, Login]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) < 2 or not fields[0] or not fields[1].startswith("$argon2"):
            raise UsersFileError(f"{path}:{number}: expected user:argon2-hash[:tenant[:stream]]")
        user, digest = fields[0], fields[1]
        tenant = fields[2] if len(fields) > 2 else ""
        stream = fields[3] if len(fields) > 3 else ""
        users[user] = (digest, Login(user, tenant, stream))
    return users


class Authenticator:
    def __init__(
        self, config: SmtpAuthConfig, plugins: PluginHost, store: PolicyStore | None = None
    ) -> None:
        self._config = config
        self._plugins = plugins
        self._store = store
        self._bucket = config.failure_window / BUCKETS
        self._users: dict[str, tuple[str, Login]] = {}
        self._cache: dict[tuple[str, bytes], tuple[float, Login]] = {}
        self._pepper = secrets.token_bytes(32)  # keys the cache digests
        self._failures: dict[str, deque[float]] = {}
        self.reload()

    @property
    def enabled(self) -> bool:
        return self._config.users_file is not None or self._plugins.has("smtp_auth")

    def reload(self) -> int:
        """Read the users file again (SIGHUP); how many users it has."""
        path = self._config.users_file
        if path is None:
            return 0
        self._users = read_users(path)
        self._cache.clear()
        warn_if_exposed(path, "SMTP users file")
        return len(self._users)

    def blocked(self, ip: str) -> bool:
        """Whether `ip` failed too often lately to be let try again: here, or
        (through the store) in another process or node."""
        return max(self._local_failures(ip), self._shared_failures(ip)) >= self._config.max_failures

    def _local_failures(self, ip: str) -> int:
        failures = self._failures.get(ip)
        if not failures:
            return 0
        horizon = time.monotonic() - self._config.failure_window
        while failures and failures[0] < horizon:
            failures.popleft()
        if not failures:
            del self._failures[ip]
        return len(failures)

    def _shared_failures(self, ip: str) -> int:
        if self._store is None:
            return 0
        now = int(time.time() // self._bucket)
        try:
            records = (
                self._store.get(FAILURES, f"{ip}|{b}") for b in range(now - BUCKETS + 1, now + 1)
            )
            return sum(int(r.get("n", 0)) for r in records if r)
        except StoreUnavailable:
            return 0  # this process's own count decides

    async def _failed(self, ip: str) -> None:
        if ip not in self._failures and len(self._failures) >= MAX_TRACKED_IPS:
            del self._failures[next(iter(self._failures))]
        self._failures.setdefault(ip, deque(maxlen=self._config.max_failures)).append(
            time.monotonic()
        )
        if self._store is not None:
            bucket = int(time.time() // self._bucket)
            expires = (bucket + BUCKETS + 1) * self._bucket
            with contextlib.suppress(StoreUnavailable):
                await self._store.add_counts(FAILURES, [(f"{ip}|{bucket}", {"n": 1}, expires)])

    async def login(self, session: SessionInfo, user: str, password: str) -> Login | None:
        """The Login if these credentials are good, else None (counted against
        the client's IP). Never logs the password."""
        found = await self._check(session, user, password)
        outcome = "success" if found else "failure"
        AUTH_ATTEMPTS.labels(outcome).inc()
        if found is None:
            await self._failed(session.client_ip)
            event("auth_failed", logging.WARNING, client=session.client_ip, user=user[:64])
        else:
            event("auth", client=session.client_ip, user=found.user, tenant=found.tenant)
        return found

    async def _check(self, session: SessionInfo, user: str, password: str) -> Login | None:
        login = await self._plugins.first(
            "smtp_auth", session=session, username=user, password=password
        )
        if isinstance(login, Login):
            return login
        if isinstance(login, Decision):  # the plugin timed out
            raise AuthUnavailable(login.text)
        entry = self._users.get(user)
        if entry is None:
            # Hash anyway, so an unknown user takes as long as a wrong password.
            await asyncio.to_thread(_verify, _decoy(), password)
            return None
        digest, login = entry
        key = (user, hmac.new(self._pepper, password.encode(), hashlib.sha256).digest())
        cached = self._cache.get(key)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        if not await asyncio.to_thread(_verify, digest, password):
            return None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (time.monotonic() + self._config.cache_seconds, login)
        return login


@functools.cache
def _decoy() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


def _verify(digest: str, password: str) -> bool:
    try:
        return _hasher.verify(digest, password)
    except (VerificationError, InvalidHashError):
        return False
