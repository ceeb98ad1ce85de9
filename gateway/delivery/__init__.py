"""Delivery: MX resolution, the outbound SMTP client, the engine and DSNs."""
