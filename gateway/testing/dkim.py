"""DKIM test helpers: make keys, publish them in a test zone, and verify
signatures with independent verifiers (dkimpy, and OpenDKIM's `opendkim -t`).

Never verify the gateway's signatures only with the gateway's own code.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dns.resolver


def write_key(path: Path, kind: str = "rsa2048") -> Path:
    """A new private key in PEM: rsa<bits> (PKCS#1) or ed25519 (PKCS#8)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if kind == "ed25519":
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    else:
        bits = int(kind.removeprefix("rsa"))
        pem = rsa.generate_private_key(65537, bits).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    path.write_bytes(pem)
    return path


def public_record(path: Path) -> str:
    """The DKIM TXT record for a PEM private key, computed with `cryptography`
    (not with the gateway), so a test does not trust our own encoding."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = serialization.load_pem_private_key(path.read_bytes(), None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def txt_zone_line(name: str, record: str) -> str:
    """A zone-file TXT line; records over 255 octets are split into strings."""
    chunks = " ".join(f'"{record[i : i + 200]}"' for i in range(0, len(record), 200))
    return f"{name} TXT {chunks}"


@dataclass(frozen=True)
class SignatureCheck:
    domain: str
    selector: str
    ok: bool


class DkimpyVerifier:
    """dkimpy, fetching public keys from a real DNS server."""

    def __init__(self, address: str, port: int) -> None:
        self._resolver = dns.resolver.Resolver(configure=False)
        self._resolver.nameservers = [address]
        self._resolver.port = port
        self._resolver.timeout = self._resolver.lifetime = 5.0

    def _txt(self, name: bytes, timeout: int = 5) -> bytes:
        try:
            answer = self._resolver.resolve(name.decode().rstrip("."), "TXT")
        except dns.exception.DNSException:
            return b""
        return b"".join(b"".join(rr.strings) for rr in answer)

    def verify(self, message: bytes) -> list[SignatureCheck]:
        """One result per DKIM-Signature, top to bottom."""
        import dkim

        checker = dkim.DKIM(message)
        count = sum(
            1
            for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            if line.lower().startswith(b"dkim-signature:")
        )
        results = []
        for idx in range(count):
            try:
                ok = bool(checker.verify(idx=idx, dnsfunc=self._txt))
            except dkim.DKIMException:  # e.g. body hash mismatch: a failed verification
                ok = False
            sig = checker.signature_fields or {}
            results.append(
                SignatureCheck(sig.get(b"d", b"").decode(), sig.get(b"s", b"").decode(), ok)
            )
        return results


def one_signature_each(message: bytes) -> list[bytes]:
    """One copy of the message per DKIM-Signature, keeping only that one.
    Removing the others is harmless: no signature covers DKIM-Signature."""
    head, sep, body = message.partition(b"\r\n\r\n")
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    signatures = [i for i, f in enumerate(fields) if f.lower().startswith(b"dkim-signature:")]
    return [
        b"\r\n".join(f for i, f in enumerate(fields) if i == keep or i not in signatures)
        + sep
        + body
        for keep in signatures
    ]


def opendkim_verify(message: bytes, records: dict[str, str]) -> list[str]:
    """OpenDKIM's verdict for each signature of a message (`opendkim -t` checks
    one signature per run, so each is run alone). Keys come from `records`
    ({"sel._domainkey.domain": "v=DKIM1; ..."}) through TestPublicKeys."""
    binary = shutil.which("opendkim") or "/usr/sbin/opendkim"
    verdicts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gateway-opendkim-") as tmp:
        d = Path(tmp)
        (d / "keys").write_text("".join(f"{n} {r}\n" for n, r in records.items()))
        (d / "opendkim.conf").write_text(
            f"TestPublicKeys {d / 'keys'}\nMode v\nSyslog no\nAlwaysAddARHeader no\n"
        )
        for copy in one_signature_each(message):
            (d / "message.eml").write_bytes(copy)
            out = subprocess.run(
                [binary, "-x", str(d / "opendkim.conf"), "-t", str(d / "message.eml")],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            lines = (out.stdout + out.stderr).splitlines()
            verdicts += [line for line in lines if "verification" in line] or [
                f"no verdict: {out.stdout}{out.stderr}"
            ]
    return verdicts
