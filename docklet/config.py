"""The control plane's settings: one table, used for parsing, defaults and `--help`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from docklet import defaults


def default_data_dir() -> Path:
    """`/data` inside a container (where the volume is mounted), else the user's data dir."""
    if Path("/.dockerenv").exists():
        return Path(defaults.CONTAINER_DATA_DIR)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "docklet"


def _setting(default: Any, help: str, **kw: Any) -> Any:
    if callable(default):
        return field(default_factory=default, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class CPConfig:
    data_dir: Path = _setting(default_data_dir, "Where the database and the Git repository live.")
    host: str = _setting(defaults.CP_HOST, "Address to listen on.")
    port: int = _setting(defaults.CP_PORT, "Port to listen on.")
    threads: int = _setting(defaults.CP_THREADS, "HTTP worker threads (one per waiting agent).")
    heartbeat_interval: float = _setting(
        defaults.HEARTBEAT_INTERVAL, "Seconds between agent heartbeats (told to agents)."
    )
    heal_delay: float = _setting(
        defaults.HEAL_DELAY, "Seconds a dead container stays down before it is restarted."
    )
    task_lease: float = _setting(defaults.TASK_LEASE, "Seconds an agent holds a task unreported.")
    reconcile_interval: float = _setting(
        defaults.RECONCILE_INTERVAL, "Seconds between reconcile passes (work also wakes it)."
    )
    log_level: str = _setting("INFO", "DEBUG, INFO, WARNING or ERROR.")

    def __post_init__(self) -> None:
        problems = [
            f"--{name.replace('_', '-')} must be {rule}"
            for name, ok, rule in (
                ("port", 0 <= self.port <= 65535, "a port number (0 picks a free one)"),
                ("threads", 4 <= self.threads <= 1024, "between 4 and 1024"),
                ("heartbeat_interval", 0.1 <= self.heartbeat_interval <= 3600, "0.1s to 1h"),
                ("heal_delay", 0 <= self.heal_delay <= 86400, "0 to 1 day"),
                ("task_lease", 5 <= self.task_lease <= 86400, "5s to 1 day"),
                ("reconcile_interval", 0.05 <= self.reconcile_interval <= 3600, "0.05s to 1h"),
            )
            if not ok  # NaN fails every comparison, so it lands here too
        ]
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def unknown_after(self) -> float:
        return 3 * self.heartbeat_interval

    @property
    def offline_after(self) -> float:
        return 6 * self.heartbeat_interval

    @property
    def db_path(self) -> Path:
        return self.data_dir / "docklet.db"

    @property
    def repo_path(self) -> Path:
        return self.data_dir / "repo.git"


def settings() -> list[tuple[str, type, Any, str]]:
    """(name, type, default, help) for every setting: what the CLI options are made from."""
    rows = []
    for f in fields(CPConfig):
        default = f.default_factory() if callable(f.default_factory) else f.default
        rows.append(
            (
                f.name,
                type(default) if not isinstance(default, Path) else Path,
                default,
                f.metadata["help"],
            )
        )
    return rows
