"""Deliverability Gateway: an outbound SMTP relay that enforces deliverability policy."""

from gateway._core import __version__

__all__ = ["__version__"]
