"""`docklet login`, `logout` and `token …`: the CLI's credentials.

The token comes from DOCKLET_TOKEN, else from where `docklet login` kept it
(`credentials.stored_token`). It is sent only as an Authorization header and is printed
only by the command that creates it, once.
"""

from __future__ import annotations

import json
import sys
import time
from urllib.parse import quote

import click

from docklet.cli import credentials
from docklet.cli.base import TEXT, TOKEN, Context, ExitCode, Failed, cli, json_option, pass_ctx
from docklet.common.errors import APIError
from docklet.wire.client import NULL, NUMBER, Shape

WHOAMI: Shape = {"name": str, "scope": str}
TOKENS: Shape = {"name": str, "scope": str, "created_at": NUMBER, "last_used_at": (NUMBER, NULL)}


@cli.command()
@click.option("--token-stdin", is_flag=True, help="Read an API token from standard input.")
@pass_ctx
def login(ctx: Context, token_stdin: bool) -> None:
    """Log in to the control plane and keep the token (OS keyring, or a 0600 file).

    Example: docklet login --cp http://cp:8080
    """
    if token_stdin:
        token = sys.stdin.readline().strip()
        if not token:
            raise Failed("no token on standard input", ExitCode.USAGE)
    else:
        try:
            token = ctx.bootstrap()["token"]
        except APIError as exc:
            if exc.status != 403 or not sys.stdin.isatty():
                raise
            click.echo(f"! {exc.message}", err=True)
            token = click.prompt("API token", hide_input=True).strip()
    ctx.client.token = token
    who = ctx.client.request("GET", "/api/auth/whoami", expect=WHOAMI)
    where = credentials.save(ctx.cp, token)
    click.echo(f"✔ Logged in to {ctx.cp} as {who['name']} ({who['scope']}); token kept in {where}")


@cli.command()
@pass_ctx
def logout(ctx: Context) -> None:
    """Forget the token kept for this control plane.

    Example: docklet logout
    """
    if credentials.forget(ctx.cp):
        click.echo(f"✔ Logged out of {ctx.cp}")
    else:
        click.echo(f"✔ No token was kept for {ctx.cp}")


@cli.group()
def token() -> None:
    """API tokens: create (shown once), list, revoke.

    Example: docklet token create ci --scope read
    """


@token.command("create")
@click.argument("name", type=TEXT)
@click.option("--scope", type=click.Choice(["read", "admin"]), default="read", show_default=True)
@json_option
@pass_ctx
def token_create(ctx: Context, name: str, scope: str, as_json: bool) -> None:
    """Create an API token; it is shown only now.

    Example: docklet token create ci --scope read
    """
    answer = ctx.call("POST", "/api/tokens", TOKEN, {"name": name, "scope": scope})
    if as_json:
        click.echo(json.dumps(answer))
        return
    click.echo(f"✔ Token {answer['name']} ({answer['scope']}); it is shown only now:")
    click.echo(answer["token"])


@token.command("list")
@json_option
@pass_ctx
def token_list(ctx: Context, as_json: bool) -> None:
    """List API tokens (names and scopes; never the secrets).

    Example: docklet token list
    """
    rows = ctx.call("GET", "/api/tokens", [TOKENS])
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'NAME':<24} {'SCOPE':<6} {'CREATED':<20} LAST USED")
    for r in rows:
        used = _when(r["last_used_at"]) if r["last_used_at"] else "never"
        click.echo(f"{r['name']:<24} {r['scope']:<6} {_when(r['created_at']):<20} {used}")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


@token.command("revoke")
@click.argument("name", type=TEXT)
@click.option(
    "--force",
    is_flag=True,
    help="Revoke even the last admin token (then only docklet-cp token create, run on the"
    " control plane's host, can make another).",
)
@pass_ctx
def token_revoke(ctx: Context, name: str, force: bool) -> None:
    """Revoke an API token at once (the last admin token only with --force).

    Example: docklet token revoke ci
    """
    path = f"/api/tokens/{quote(name, safe='')}" + ("?force=true" if force else "")
    ctx.call("DELETE", path, {"name": str})
    click.echo(f"✔ Revoked {name}")
