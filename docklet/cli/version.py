"""`docklet version`: this CLI's version, the control plane's, and its bootstrap windows."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from docklet import __version__
from docklet.cli.base import Context, cli, error_line, exit_code, json_option, pass_ctx
from docklet.common.errors import DockletError
from docklet.wire.client import Shape

VERSION: Shape = {"version": str, "api": str}


@cli.command()
@json_option
@pass_ctx
def version(ctx: Context, as_json: bool) -> None:
    """Show the CLI's and the control plane's versions.

    Example: docklet version
    """
    try:
        cp = ctx.call("GET", "/api/version", VERSION)
    except DockletError as exc:
        # The CLI's own version is still worth printing; the exit code tells what failed.
        error = {"error": error_line(exc), "code": exc.code, "status": exc.status}
        if as_json:
            click.echo(json.dumps({"cli": __version__, "control_plane": error}))
        else:
            click.echo(f"docklet CLI     {__version__}")
            click.echo(f"control plane   unavailable ({error['error']})")
        raise click.exceptions.Exit(exit_code(exc)) from None
    if as_json:
        click.echo(json.dumps({"cli": __version__, "control_plane": cp}))
        return
    click.echo(f"docklet CLI     {__version__}")
    click.echo(f"control plane   {cp['version']} (API {cp['api']}) at {ctx.client.base_url}")
    _show_bootstrap(cp.get("bootstrap"))


def _show_bootstrap(state: Any) -> None:
    """Whether the first login and the first agent are still let in without a token."""
    if not isinstance(state, dict):
        return
    for who, what in (("admin", "first login gets admin"), ("nodes", "first agent joins")):
        window = state.get(who)
        if isinstance(window, dict) and window.get("open"):
            left = max(0, (window.get("closes_at") or 0) - time.time())
            click.echo(f"bootstrap       {who} window open for {left:.0f}s ({what})")
        else:
            click.echo(f"bootstrap       {who} window closed")
