"""The control plane process: `docklet-cp`. HTTP server, controller loop, repo watcher."""

from __future__ import annotations

import logging
import threading
from typing import Any

import click

from docklet import __version__, logs
from docklet import config as settings
from docklet.config import CPConfig
from docklet.controlplane import ControlPlane

log = logging.getLogger(__name__)


def create_server(cp: ControlPlane) -> Any:
    """The HTTP server for `cp`'s API (waitress), not yet running."""
    import waitress

    from docklet.api import make_app
    from docklet.githttp import GitHTTP

    config = cp.config
    return waitress.create_server(
        GitHTTP(cp, make_app(cp)),  # /git/apps.git: clone and push over HTTP
        host=config.host,
        port=config.port,
        threads=config.threads,
        ident=f"docklet/{__version__}",
        channel_timeout=int(config.long_poll_max) + 30,
        # Refused by the server before it is buffered: waitress would otherwise
        # spool up to 1 GiB to disk before the API could say no.
        max_request_body_size=config.max_body,
    )


def serve(config: CPConfig) -> None:
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
