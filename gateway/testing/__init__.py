"""Real test parts on loopback, for the gateway's tests and for plugin authors.

- `DnsServer`: a real authoritative DNS server (NSD) serving test zones.
- `Receiver`, `RefusingServer`: real SMTP servers playing a recipient's MX.
- `GatewayProcess`: the gateway itself, as a subprocess with a chosen config.
"""

from gateway.testing.dns import DnsServer
from gateway.testing.net import free_port
from gateway.testing.process import GatewayProcess
from gateway.testing.receiver import Received, Receiver, RefusingServer

__all__ = [
    "DnsServer",
    "GatewayProcess",
    "Received",
    "Receiver",
    "RefusingServer",
    "free_port",
]
