"""TLS for the SMTP listeners: one server context, re-read on SIGHUP.

The context is built once and shared by the STARTTLS listeners and the
implicit-TLS (submissions) ones; reloading loads the new certificate and key
into the same context, so new handshakes use them while sessions already
encrypted go on undisturbed.
"""

from __future__ import annotations

import logging
import os
import ssl

from gateway.config import SmtpTlsConfig
from gateway.log import event
from gateway.secret_files import warn_if_exposed

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class TlsError(Exception):
    """The certificate or key cannot be used; names the file and why."""


class ServerTls:
    """The listeners' SSLContext (None when no certificate is configured)."""

    def __init__(self, config: SmtpTlsConfig) -> None:
        self._config = config
        self.context: ssl.SSLContext | None = None
        self._loaded = False
        if config.enabled:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = _VERSIONS[config.min_version]
            context.set_ciphers(config.ciphers)
            context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
            context.verify_mode = ssl.CERT_NONE  # clients authenticate with AUTH
            self.context = context
            self.reload()

    def reload(self) -> bool:
        """Load the certificate and key again; False (logged) if they are unusable,
        and then the previous pair stays in use."""
        if self.context is None:
            return False
        assert self._config.certificate is not None
        assert self._config.key is not None
        cert, key = self._config.certificate, self._config.key
        try:
            self.context.load_cert_chain(os.fspath(cert), os.fspath(key))
        except (OSError, ssl.SSLError) as exc:
            error = TlsError(f"{cert} / {key}: {exc}")
            if not self._loaded:  # at start: the gateway cannot run like this
                raise error from None
            event("tls_reload_failed", logging.ERROR, error=str(error))
            return False
        self._loaded = True
        warn_if_exposed(key, "TLS private key")
        event("tls_loaded", certificate=str(cert))
        return True
