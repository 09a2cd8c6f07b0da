"""The control plane process: `docklet-cp`. HTTP server, controller loop, repo watcher."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import click

from docklet import __version__, logs
from docklet import config as settings
from docklet.config import CPConfig
from docklet.controlplane import ControlPlane

log = logging.getLogger(__name__)


OVERLOAD_RETRY_AFTER = 1  # seconds a client told 503 waits (agents add jitter)


class Overload:
    """WSGI middleware: a 503 with Retry-After, at once, while requests wait too long.

    `waited` says how long the oldest request waiting for a worker thread has
    waited; beyond `limit` seconds the CP is saturated, and answering quickly
    (in the API's one JSON error shape) drains the queue instead of letting
    every client time out. While it refuses, it cannot hear heartbeats:
    `refused_at` lets liveness give every node that time back.
    """

    def __init__(self, app: Any, waited: Callable[[], float], limit: float) -> None:
        self.app, self.waited, self.limit = app, waited, limit
        self.refused = 0  # answers given as 503, for the logs and the benchmark
        self.refused_at = 0.0  # time.time() of the latest

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        waited = self.waited()
        if waited <= self.limit:
            return self.app(environ, start_response)
        self.refused += 1
        self.refused_at = time.time()
        if self.refused % 1000 == 1:
            log.warning(
                "overloaded: requests wait %.1fs for a thread; answering 503 (%d so far)",
                waited,
                self.refused,
            )
        message = "the control plane is overloaded; retry after a moment"
        body = json.dumps(
            {"error": {"code": "overloaded", "message": message, "status": 503}}
        ).encode()
        start_response(
            "503 Service Unavailable",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Retry-After", str(OVERLOAD_RETRY_AFTER)),
            ],
        )
        return [body]


def create_server(cp: ControlPlane) -> Any:
    """The HTTP server for `cp`'s API (waitress), not yet running."""
    import waitress

    from docklet.api import make_app
    from docklet.githttp import GitHTTP

    config = cp.config
    cp.limit_long_polls(config.long_poll_slots)  # this server's threads, not the defaults
    server: Any = None

    def waited() -> float:
        """How long the oldest request waiting for a thread has waited (its channel's
        last read is when the request was complete)."""
        queue = server.task_dispatcher.queue if server is not None else None
        try:
            return time.time() - queue[0].last_activity if queue else 0.0
        except (IndexError, AttributeError):  # taken by a thread meanwhile
            return 0.0

    app = Overload(
        GitHTTP(cp, make_app(cp)),  # /git/apps.git: clone and push over HTTP
        waited,
        config.overload_wait,
    )
    cp.overload = app  # its count of 503s shows in GET /api/version's metrics
    server = waitress.create_server(
        app,
        host=config.host,
        port=config.port,
        threads=config.threads,
        # poll(), not select(): select() cannot watch a descriptor numbered 1,024 or
        # more, and a thousand agents' connections go past it.
        asyncore_use_poll=True,
        connection_limit=config.connection_limit,
        ident=f"docklet/{__version__}",
        channel_timeout=int(config.long_poll_max) + 30,
        # Refused by the server before it is buffered: waitress would otherwise
        # spool up to 1 GiB to disk before the API could say no.
        max_request_body_size=config.max_body,
    )
    return server


def raise_fd_limit(wanted: int) -> None:
    """Let the process open `wanted` descriptors (plus spare), as far as the hard limit allows."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + 256 if hard == resource.RLIM_INFINITY else min(wanted + 256, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit to %d: %s", target, exc)


def serve(config: CPConfig) -> None:
    raise_fd_limit(config.connection_limit)
    # waitress warns once per queued request past its own threshold: under load that
    # is a line per request. Overload (503s, counted in /api/version) says it once in 1,000.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    cp = ControlPlane(config)
    stop = threading.Event()
    for target in (cp.run_controller, cp.watch_repo):
        threading.Thread(target=target, args=(stop,), daemon=True, name=target.__name__).start()
    server = create_server(cp)
    log.info(
        "control plane %s listening on http://%s:%s (data in %s, cluster %s)",
        __version__,
        config.host,
        server.effective_port,
        config.data_dir,
        cp.cluster_id,
    )
    cp.announce_bootstrap(f"http://{config.host}:{server.effective_port}")
    try:
        server.run()
    finally:
        stop.set()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@settings.options(CPConfig)
@click.version_option(__version__, prog_name="docklet-cp")
def main(**options: Any) -> None:
    """Run the Docklet control plane.

    Example: docklet-cp --data-dir ./data --port 8080
    """
    config = settings.build(CPConfig, options)
    logs.setup(config.log_level)
    try:
        serve(config)
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {config.host}:{config.port}: {exc}") from exc
    except KeyboardInterrupt:
        log.info("control plane stopped")
