"""Signed tokens that let a report find its way back.

- VERP: the envelope sender `b+TOKEN@bounce_domain`, one per recipient, so a
  bounce names the message and recipient even when its body does not.
- X-Gateway-Id: a header added before signing, naming the message, which
  receivers return in bounces and (as the original's headers) in ARF reports.

Tokens carry an HMAC so a forged report cannot suppress arbitrary addresses.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

MAC_BYTES = 6  # 48 bits: enough against forgery of a suppression, short in an address
_VERP = re.compile(r"^b\+([a-z2-7]+)@", re.IGNORECASE)


def derive_secret(configured: str, hostname: str) -> bytes:
    """The configured secret, or one derived from the host name (stable across restarts)."""
    return (configured or f"gateway-feedback:{hostname}").encode()


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest()[:MAC_BYTES]


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _unb32(text: str) -> bytes:
    return base64.b32decode(text.upper() + "=" * (-len(text) % 8))


def message_id_token(secret: bytes, qid: str) -> str:
    """The X-Gateway-Id value for a message: QID.MAC."""
    return f"{qid}.{_b32(_mac(secret, qid.encode()))}"


def read_message_id_token(secret: bytes, value: str) -> str | None:
    """The queue ID in an X-Gateway-Id value, if its MAC is right."""
    qid, _, mac = value.strip().partition(".")
    if not qid or not hmac.compare_digest(mac.lower(), _b32(_mac(secret, qid.encode()))):
        return None
    return qid


def verp_address(secret: bytes, qid: str, index: int, bounce_domain: str) -> str:
    """The envelope sender for recipient `index` of message `qid`."""
    payload = qid.encode() + index.to_bytes(2, "big")
    return f"b+{_b32(payload + _mac(secret, payload))}@{bounce_domain}"


def read_verp(secret: bytes, address: str) -> tuple[str, int] | None:
    """(queue ID, recipient index) from a VERP address, if it is one of ours."""
    found = _VERP.match(address.strip().strip("<>"))
    if not found:
        return None
    try:
        raw = _unb32(found.group(1))
    except ValueError:
        return None
    payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if len(payload) < 3 or not hmac.compare_digest(mac, _mac(secret, payload)):
        return None
    return payload[:-2].decode("ascii", "replace"), int.from_bytes(payload[-2:], "big")
