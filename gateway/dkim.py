"""DKIM keys and which of them sign a message.

Keys are PEM files named in `[[dkim.keys]]`, loaded once into Rust signers and
reloaded when a file changes (checked every `dkim.reload_interval`) or on SIGHUP.
A key that fails to load at start stops the gateway with a clear message; one
that fails on reload is logged and the previous key keeps signing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from gateway._core import DkimKeyError, DkimSigner
from gateway.config import DkimConfig, DkimKeyConfig
from gateway.log import event
from gateway.secret_files import warn_if_exposed


class KeyLoadError(Exception):
    """A configured DKIM key that cannot be used; the message names the file."""


@dataclass
class _LoadedKey:
    config: DkimKeyConfig
    stamp: tuple[int, int]  # (mtime_ns, size) of the file when loaded
    signer: DkimSigner


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


class KeyStore:
    """The signers for every configured key, grouped by signing domain."""

    def __init__(self, config: DkimConfig) -> None:
        self._config = config
        self._keys: list[_LoadedKey] = []
        self._by_domain: dict[str, list[DkimSigner]] = {}
        for key in config.keys:
            try:
                self._keys.append(self._load(key))
            except (OSError, DkimKeyError) as exc:
                raise KeyLoadError(_describe(key, exc)) from None
        self._index()

    def _load(self, key: DkimKeyConfig) -> _LoadedKey:
        stamp = _stamp(key.key_file)
        warn_if_exposed(key.key_file, "DKIM private key")
        signer = DkimSigner(
            key.key_file.read_bytes(),
            key.domain.lower().rstrip("."),
            key.selector,
            headers=key.headers if key.headers is not None else self._config.headers,
            header_canonicalization=self._config.header_canonicalization,
            body_canonicalization=self._config.body_canonicalization,
            expiration=int(self._config.expiration),
        )
        return _LoadedKey(key, stamp, signer)

    def _index(self) -> None:
        by_domain: dict[str, list[DkimSigner]] = {}
        for loaded in self._keys:
            by_domain.setdefault(loaded.signer.domain, []).append(loaded.signer)
        self._by_domain = by_domain

    @property
    def signers(self) -> list[DkimSigner]:
        return [k.signer for k in self._keys]

    async def watch(self, interval: float) -> None:
        """Reload changed key files every `interval` seconds, so rotated keys
        are picked up without a signal (0: never)."""
        if interval <= 0 or not self.signers:
            return
        while True:
            await asyncio.sleep(interval)
            self.reload()

    def reload(self, *, force: bool = False) -> int:
        """Reload keys whose file changed (all with force); returns how many."""
        reloaded = 0
        for i, loaded in enumerate(self._keys):
            path = loaded.config.key_file
            try:
                if not force and _stamp(path) == loaded.stamp:
                    continue
                self._keys[i] = self._load(loaded.config)
            except (OSError, DkimKeyError) as exc:
                event(
                    "dkim_key_error",
                    logging.ERROR,
                    file=str(path),
                    error=_describe(loaded.config, exc),
                    action="keeping the previous key",
                )
                continue
            reloaded += 1
            event(
                "dkim_key_loaded",
                domain=loaded.config.domain,
                selector=loaded.config.selector,
                file=str(path),
            )
        if reloaded:
            self._index()
        return reloaded

    def signers_for(self, author_domains: list[str]) -> list[DkimSigner]:
        """The signers for a message whose From has these domains.

        1. The author domain, or its nearest parent we hold a key for (DMARC
           relaxed alignment), when `sign_author_domain` is on.
        2. Otherwise `domain_map[author domain]`, else `domain_map["*"]`.
        3. Plus every domain in `also_sign` (e.g. the sending service's own).
        Every key of a chosen domain signs (e.g. RSA and Ed25519 side by side).
        """
        domains: list[str] = []
        if self._config.sign_author_domain:
            for author in author_domains:
                held = self._held_parent(author)
                if held:
                    domains.append(held)
        if not domains:
            for author in author_domains or [""]:
                mapped = self._config.domain_map.get(author) or self._config.domain_map.get("*")
                if mapped:
                    domains.append(mapped)
        domains += self._config.also_sign
        chosen: list[DkimSigner] = []
        for domain in dict.fromkeys(domains):
            chosen += self._by_domain.get(domain, [])
        return chosen

    def _held_parent(self, domain: str) -> str | None:
        labels = domain.split(".")
        for i in range(len(labels) - 1):  # never a bare TLD
            candidate = ".".join(labels[i:])
            if candidate in self._by_domain:
                return candidate
        return None


def _describe(key: DkimKeyConfig, exc: Exception) -> str:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"DKIM key {key.key_file} (d={key.domain} s={key.selector}): {reason}"
