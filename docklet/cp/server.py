"""The control plane process: `docklet-cp`. HTTP server, controller loop, repo watcher."""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import click

from docklet import __version__
from docklet.common import logs, settings
from docklet.cp import admin
from docklet.cp.controller import Controller
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.settings import CPConfig

log = logging.getLogger(__name__)


OVERLOAD_RETRY_AFTER = 1  # seconds a client told 503 waits (agents add jitter)
LISTEN_BACKLOG = 1024  # connections the kernel holds for the accepting thread
SOCKET_TIMEOUT = 10  # seconds a worker waits on one read or write of a client's socket
MAX_HEADER_BYTES = 64 * 1024
OPEN_FILES = 8192  # the open-file limit the CP raises itself to, as far as it may


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


class Server:
    """The CP's HTTP server: cheroot, CherryPy's WSGI server, in this process.

    One thread watches every connection through the OS's selector (epoll on
    Linux), so an open connection costs nothing until it has a request; a
    pool of `--threads` workers runs the requests. (waitress, before it,
    walked every open connection in Python on every turn of its loop: at a
    thousand agents that loop took most of a core, see docs/architecture.md.)
    """

    def __init__(self, cp: ControlPlane) -> None:
        from cheroot import wsgi

        from docklet.cp.http.api import make_app
        from docklet.cp.http.githttp import GitHTTP

        config = cp.config
        cp.polls.limit(config.long_poll_slots)  # this server's threads, not the defaults
        self.app = Overload(
            GitHTTP(cp, make_app(cp)),  # /git/apps.git: clone and push over HTTP
            self.waited,
            config.overload_wait,
        )
        # Its 503s make the CP deaf for a while, and show in GET /api/version's metrics.
        cp.liveness.overload = self.app
        self.http = wsgi.Server(
            (config.host, config.port),
            self.app,
            numthreads=config.threads,
            max=config.threads,
            server_name=f"docklet/{__version__}",
            request_queue_size=LISTEN_BACKLOG,
            timeout=SOCKET_TIMEOUT,
        )
        # Refused by the server before the API reads it.
        self.http.max_request_body_size = config.max_body
        self.http.max_request_header_size = MAX_HEADER_BYTES
        self._pool = self.http.requests
        self._queue: Any = getattr(self._pool, "_queue", None)
        if self._queue is None:  # another cheroot: no queue to watch, no 503s
            log.warning("this cheroot has no request queue to watch: overload answers are off")
        put = self._pool.put

        def stamped(conn: Any) -> None:
            conn.docklet_queued_at = time.time()
            put(conn)

        self._pool.put = stamped
        self.http.error_log = self._error_log
        self.http.prepare()  # binds: a port in use fails here, before anything runs

    @property
    def port(self) -> int:
        return int(self.http.bind_addr[1])

    def waited(self) -> float:
        """How long the oldest request waiting for a worker thread has waited."""
        try:
            return time.time() - self._queue.queue[0].docklet_queued_at
        except (AttributeError, IndexError):  # nothing waits, or a worker took it meanwhile
            return 0.0

    @staticmethod
    def _error_log(msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
        """cheroot's own messages (a client gone mid-request, a bad request line) go to the
        CP's log, not to stderr; with their traceback when cheroot gives one."""
        log.log(level, "http: %s", msg, exc_info=traceback)

    def run(self) -> None:
        """Serve until `stop()`."""
        self.http.serve()

    def stop(self) -> None:
        self.http.stop()


def raise_fd_limit(wanted: int = OPEN_FILES) -> None:
    """Let the process open `wanted` descriptors, as far as the hard limit allows."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit to %d: %s", target, exc)


def serve(config: CPConfig) -> None:
    raise_fd_limit()  # a thousand agents' connections, Git's pipes, SQLite's files
    cp = ControlPlane(config)
    # What the process holds once started (modules, classes, settings) is never
    # garbage: frozen, it is left out of the oldest generation's collections,
    # which stop every thread (a write transaction included) for their length.
    gc.freeze()
    stop = threading.Event()
    controller = Controller(cp)
    for name, target in (("controller", controller.run), ("watch_repo", controller.watch_repo)):
        threading.Thread(target=target, args=(stop,), daemon=True, name=name).start()
    server = Server(cp)
    log.info(
        "control plane %s listening on http://%s:%s (data in %s, cluster %s)",
        __version__,
        config.host,
        server.port,
        config.data_dir,
        cp.cluster_id,
    )
    cp.tokens.announce_bootstrap(f"http://{config.host}:{server.port}")
    try:
        server.run()
    finally:
        stop.set()
        server.stop()


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@settings.options(CPConfig)
@click.version_option(__version__, prog_name="docklet-cp")
@click.pass_context
def main(ctx: click.Context, **options: Any) -> None:
    """Run the Docklet control plane; with a command, administer its data offline.

    Example: docklet-cp --data-dir ./data --port 8080
    """
    if ctx.invoked_subcommand is not None:  # `docklet-cp token create …`: no server
        ctx.obj = {"data_dir": options["data_dir"]}
        return
    config = settings.build(CPConfig, options)
    logs.setup(config.log_level)
    try:
        serve(config)
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {config.host}:{config.port}: {exc}") from exc
    except KeyboardInterrupt:
        log.info("control plane stopped")


main.add_command(admin.token)
