"""This node's stable name in a fleet: a random ID made once and kept in
`<data_dir>/node.id`, so it survives restarts and differs between nodes,
even several on one host or with the same host name. Used for state that
belongs to one node but lives in the shared store (a webhook's backlog)."""

from __future__ import annotations

import secrets
from pathlib import Path


def node_id(data_dir: Path) -> str:
    path = data_dir / "node.id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        data_dir.mkdir(parents=True, exist_ok=True)
        made = secrets.token_hex(8)
        path.write_text(made + "\n")
        return made
