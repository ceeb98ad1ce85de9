"""Certificates for tests: a throwaway CA and server certificates it signs
(or self-signed ones), made with the openssl command."""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Certificate:
    cert: Path  # PEM
    key: Path  # PEM, mode 0600
    ca: Path | None = None  # the CA that signed it (None: self-signed)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(directory: Path, name: str = "Test CA") -> Certificate:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca.pem", directory / "ca.key"
    _openssl(
        "req", "-x509", *_EC, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", str(key), "-out", str(cert),
    )  # fmt: skip
    key.chmod(0o600)
    return Certificate(cert, key)


def issue(directory: Path, names: list[str], ca: Certificate | None = None) -> Certificate:
    """A server certificate for `names` (DNS names), signed by `ca` or self-signed."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = names[0].replace("*", "star")
    cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    san = "subjectAltName=" + ",".join(f"DNS:{n}" for n in names)
    if ca is None:
        _openssl(
            "req", "-x509", *_EC, "-days", "1", "-subj", f"/CN={names[0]}", "-addext", san,
            "-keyout", str(key), "-out", str(cert),
        )  # fmt: skip
    else:
        csr = directory / f"{stem}.csr"
        extensions = directory / f"{stem}.ext"
        extensions.write_text(f"{san}\nextendedKeyUsage=serverAuth\n")
        _openssl("req", *_EC, "-subj", f"/CN={names[0]}", "-keyout", str(key), "-out", str(csr))
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
            "-CAcreateserial", "-days", "1", "-extfile", str(extensions), "-out", str(cert),
        )  # fmt: skip
    key.chmod(0o600)
    return Certificate(cert, key, ca.cert if ca else None)
