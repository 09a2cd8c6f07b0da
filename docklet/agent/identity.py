"""The agent's node token, kept across restarts in a state file readable only by it.

A restarted agent presents the token it was given, so re-registering its
engine needs no join token; without the file (a new container with no
volume), it needs the join token again. One file per control plane URL, so
an agent pointed at another CP never offers it a token it did not issue.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def path(state_dir: Path, cp_url: str) -> Path:
    key = hashlib.sha256(cp_url.rstrip("/").encode()).hexdigest()[:16]
    return state_dir / f"node-{key}.json"


def load(state_dir: Path, cp_url: str) -> str:
    """The node token saved for this CP, or "" when there is none (or it cannot be read)."""
    file = path(state_dir, cp_url)
    try:
        data = json.loads(file.read_text())
        return str(data.get("token") or "")
    except FileNotFoundError:
        return ""
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("node state %s cannot be read (%s); registering without it", file, exc)
        return ""


def save(state_dir: Path, cp_url: str, node_id: str, token: str) -> None:
    """Write atomically, 0600: the token is the node's credential."""
    file = path(state_dir, cp_url)
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"cp": cp_url, "node_id": node_id, "token": token}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except OSError as exc:  # the agent still works; a restart will need the join token
        log.warning(
            "cannot keep the node token in %s (%s); a restart will need the join token",
            state_dir,
            exc,
        )
