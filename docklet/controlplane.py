"""The control plane process: store, repository, controller loop and HTTP API."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import click

from docklet import __version__, defaults, logs, scheduler, tasks
from docklet import config as settings_table
from docklet.config import CPConfig
from docklet.gitrepo import Changes, GitRepo
from docklet.nodes import hash_token
from docklet.store import Store, get_meta, set_meta
from docklet.sync import SyncResult, sync

log = logging.getLogger(__name__)


class ControlPlane:
    """Everything the API and the controller loop share."""

    def __init__(self, config: CPConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.db_path)
        self.repo = GitRepo(config.repo_path)
        with self.store.write() as db:
            self.cluster_id = get_meta(db, "cluster_id") or secrets.token_hex(8)
            set_meta(db, "cluster_id", self.cluster_id)
        self._wake = threading.Event()
        self._work = threading.Condition()
        # One sync at a time: a sync that read an older head must never write
        # after one that read a newer head (it would undo the newer commit).
        self._sync_lock = threading.Lock()

    # -- desired state ---------------------------------------------------

    def commit(
        self, edit: Callable[[dict[str, bytes]], Changes], message: str, author: str
    ) -> tuple[str | None, SyncResult | None]:
        """Commit an edit to the repository, then sync and schedule it at once."""
        sha = self.repo.commit(edit, message, author)
        result = self.sync()
        self.reconcile()
        return sha, result

    def sync(self) -> SyncResult | None:
        with self._sync_lock:
            return sync(self.store, self.repo)

    def reconcile(self) -> int:
        queued = scheduler.reconcile(self.store, self.config)  # one write transaction
        if queued:
            with self._work:
                self._work.notify_all()
        return queued

    def wake(self) -> None:
        """Ask the controller loop for a pass now (a heartbeat or report changed things)."""
        self._wake.set()

    # -- agents ------------------------------------------------------------

    def lease_tasks(self, node_id: str, token: str, wait: float) -> list[dict[str, Any]]:
        """This node's tasks; waits up to `wait` seconds for some to appear."""
        deadline = time.monotonic() + wait
        while True:
            with self.store.write() as db:
                leased = tasks.lease(db, node_id, hash_token(token), self.config.task_lease)
            remaining = deadline - time.monotonic()
            if leased or remaining <= 0:
                return leased
            with self._work:
                self._work.wait(min(remaining, 5.0))

    # -- the controller loop ----------------------------------------------

    def run_controller(self, stop: threading.Event, max_iterations: int | None = None) -> None:
        """Sync and reconcile until `stop` is set: on every wake, or every interval."""
        done = 0
        while not stop.is_set() and (max_iterations is None or done < max_iterations):
            try:
                self.sync()
                self.reconcile()
            except Exception:
                log.exception(
                    "controller: pass failed; retrying in %.0fs", self.config.reconcile_interval
                )
            done += 1
            self._wake.wait(self.config.reconcile_interval)
            self._wake.clear()

    def watch_repo(self, stop: threading.Event) -> None:
        """Wake the controller when a `git push` moves a ref in the bare repository."""
        from watchfiles import watch

        repo = self.config.repo_path

        def is_ref(_change: object, path: str) -> bool:
            relative = path[len(str(repo)) + 1 :]
            return relative.startswith("refs/") or relative == "packed-refs"

        try:
            for _ in watch(
                repo, watch_filter=is_ref, stop_event=stop, raise_interrupt=False, debounce=200
            ):
                self.wake()
        except Exception:  # the interval pass still syncs; this only makes it prompt
            log.exception(
                "repo watcher stopped; new pushes sync within %.0fs", self.config.reconcile_interval
            )


def serve(config: CPConfig) -> None:
    from waitress import create_server

    from docklet.api import make_app

    cp = ControlPlane(config)
    stop = threading.Event()
    for target in (cp.run_controller, cp.watch_repo):
        threading.Thread(target=target, args=(stop,), daemon=True, name=target.__name__).start()
    server = create_server(
        make_app(cp),
        host=config.host,
        port=config.port,
        threads=config.threads,
        ident=f"docklet/{__version__}",
        channel_timeout=int(defaults.LONG_POLL_MAX) + 30,
    )
    log.info(
        "control plane %s listening on http://%s:%s (data in %s, cluster %s)",
        __version__,
        config.host,
        server.effective_port,
        config.data_dir,
        cp.cluster_id,
    )
    try:
        server.run()
    finally:
        stop.set()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@settings_table.options(CPConfig)
@click.version_option(__version__, prog_name="docklet-cp")
def main(**options: Any) -> None:
    """Run the Docklet control plane.

    Example: docklet-cp --data-dir ./data --port 8080
    """
    config = settings_table.build(CPConfig, options)
    logs.setup(config.log_level)
    try:
        serve(config)
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {config.host}:{config.port}: {exc}") from exc
    except KeyboardInterrupt:
        log.info("control plane stopped")
