"""Real test parts on loopback, for the gateway's tests and for plugin authors.

- `DnsServer`: a real authoritative DNS server (NSD) serving test zones.
- `Receiver`, `RefusingServer`: real SMTP servers playing a recipient's MX.
- `GatewayProcess`: the gateway itself, as a subprocess with a chosen config.
- `RedisServer`: a real redis-server, for fleet tests.
"""

from gateway.testing.dns import DnsServer
from gateway.testing.net import free_port
from gateway.testing.process import GatewayProcess
from gateway.testing.receiver import Received, Receiver, RefusingServer
from gateway.testing.redis_server import RedisServer

__all__ = [
    "DnsServer",
    "GatewayProcess",
    "Received",
    "Receiver",
    "RedisServer",
    "RefusingServer",
    "free_port",
]
