"""Where the CLI keeps its API token: the OS keyring, else a file only the user can read.

The index file ($XDG_CONFIG_HOME/docklet/credentials.json, 0600) records, per
control plane URL, which store holds the token; so a command whose token is in
the file never imports `keyring` (slow to import: it scans entry points).
DOCKLET_TOKEN in the environment overrides both (`stored_token`).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

SERVICE = "docklet"


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "docklet"


def index_path() -> Path:
    return config_dir() / "credentials.json"


def _key(cp_url: str) -> str:
    return cp_url.rstrip("/")


def _read() -> dict[str, Any]:
    try:
        data = json.loads(index_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(data: dict[str, Any]) -> None:
    path = index_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.chmod(tmp, 0o600)  # an existing file keeps its mode through O_TRUNC
    os.replace(tmp, path)


def _keyring() -> Any:
    """The keyring module when a real backend works here, else None."""
    if os.environ.get("DOCKLET_CREDENTIAL_STORE") == "file":
        return None
    try:
        import keyring
        from keyring.backends import fail

        backend = keyring.get_keyring()
        if isinstance(backend, fail.Keyring) or getattr(backend, "priority", 0) <= 0:
            return None
        return keyring
    except Exception:  # no keyring, or a backend that breaks on load: use the file
        return None


def stored_token(cp_url: str) -> tuple[str | None, str]:
    """(token, where from): DOCKLET_TOKEN first, then what `docklet login` kept."""
    env = os.environ.get("DOCKLET_TOKEN", "").strip()
    if env:
        return env, "env"
    token = load(cp_url)
    return (token, "stored") if token else (None, "")


def load(cp_url: str) -> str | None:
    entry = _read().get(_key(cp_url))
    if not isinstance(entry, dict):
        return None
    if entry.get("store") == "keyring":
        keyring = _keyring()
        try:
            return keyring.get_password(SERVICE, _key(cp_url)) if keyring else None
        except Exception:
            return None
    token = entry.get("token")
    return token if isinstance(token, str) and token else None


def save(cp_url: str, token: str) -> str:
    """Keep `token` for `cp_url`; returns where, for the user to read."""
    data = _read()
    keyring = _keyring()
    if keyring is not None:
        try:
            keyring.set_password(SERVICE, _key(cp_url), token)
            data[_key(cp_url)] = {"store": "keyring"}
            _write(data)
            return f"the OS keyring ({type(keyring.get_keyring()).__name__})"
        except Exception:  # a locked or broken keyring: fall back to the file
            pass
    data[_key(cp_url)] = {"store": "file", "token": token}
    _write(data)
    return f"{index_path()} (readable only by you)"


def forget(cp_url: str) -> bool:
    data = _read()
    entry = data.pop(_key(cp_url), None)
    if entry is None:
        return False
    if isinstance(entry, dict) and entry.get("store") == "keyring":
        keyring = _keyring()
        if keyring is not None:
            with contextlib.suppress(Exception):
                keyring.delete_password(SERVICE, _key(cp_url))
    _write(data)
    return True
