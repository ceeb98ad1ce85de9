"""Files that hold secrets (TLS and DKIM keys, SMTP credentials, the admin
token): a warning when any user on the host can read one."""

from __future__ import annotations

import logging
from pathlib import Path

from gateway.log import event


def warn_if_exposed(path: Path, what: str) -> bool:
    """Log a warning when a secret file (key, credentials, token) can be read
    by every user on the host; True if it can."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if mode & 0o004:
        event(
            "secret_file_readable",
            logging.WARNING,
            file=str(path),
            what=what,
            mode=oct(mode & 0o777),
            fix=f"chmod 600 {path}",
        )
        return True
    return False
