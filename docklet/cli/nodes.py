"""`docklet nodes` and `nodes join-token`: the Docker hosts and how an agent joins them."""

from __future__ import annotations

import click

from docklet.cli.base import Context, cli, json_option, pass_ctx, print_json, table
from docklet.wire.client import NULL, NUMBER, Shape

NODES: Shape = {
    "node_id": str,
    "status": str,
    "last_seen_ago": NUMBER,
    "containers": int,
    "docker_ok": bool,
    "docker_error": (str, NULL),
}


@cli.group(invoke_without_command=True)
@json_option
@click.pass_context
def nodes(click_ctx: click.Context, as_json: bool) -> None:
    """List nodes and when each was last heard from.

    Example: docklet nodes
    """
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: Context = click_ctx.obj
    rows = ctx.call("GET", "/api/state/nodes", [NODES])
    if as_json:
        print_json(rows)
        return
    table(
        ("NODE", "STATUS", "LAST SEEN", "CONTAINERS", "DOCKER"),
        [
            (
                n["node_id"],
                n["status"],
                f"{n['last_seen_ago']:.0f}s ago",
                str(n["containers"]),
                "ok" if n["docker_ok"] else f"down: {n['docker_error']}",
            )
            for n in rows
        ],
    )


@nodes.command("join-token")
@click.option("--rotate", is_flag=True, help="Make a new join token; the old one stops working.")
@pass_ctx
def join_token(ctx: Context, rotate: bool) -> None:
    """Print the join token agents need (as DOCKLET_JOIN_TOKEN).

    Example: docklet nodes join-token --rotate
    """
    answer = ctx.call("POST", "/api/nodes/join-token", {"token": str}, {"rotate": rotate})
    click.echo(answer["token"])
