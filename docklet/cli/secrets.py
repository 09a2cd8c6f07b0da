"""`docklet secret set|list|rm`: values the control plane keeps encrypted for containers.

A value is read from stdin or a file, never from an argument (which `ps` and the
shell's history would show), and is never printed: `list` shows names, versions
and the apps that use each.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from urllib.parse import quote

import click

from docklet.cli.base import TEXT, Context, cli, json_option, pass_ctx, print_json, table
from docklet.common import defaults
from docklet.wire.client import NUMBER, Shape

SET: Shape = {"name": str, "version": int, "apps": [str]}
SECRET: Shape = {
    "name": str,
    "version": int,
    "versions": [int],
    "created_at": NUMBER,
    "updated_at": NUMBER,
    "apps": [str],
}
REMOVED: Shape = {"name": str, "removed": bool}


def _path(name: str) -> str:
    return f"/api/secrets/{quote(name, safe='')}"


@cli.group()
def secret() -> None:
    """Secrets: values kept encrypted by the control plane, never in Git.

    A spec uses one by name: env: {DB_PASSWORD: {secret: db-password}}, or as a
    file: secrets: [{name: db-password}] (/run/secrets/db-password).

    Example: docklet secret set db-password < ./db-password.txt
    """


def _read_value(from_file: Path | None) -> str:
    limit = defaults.SECRET_VALUE_MAX
    if from_file is not None:
        raw = from_file.read_bytes()[: limit + 1]
    else:
        if sys.stdin.isatty():
            click.echo("Type the value, then Ctrl-D (it is not echoed back later):", err=True)
        raw = sys.stdin.buffer.read(limit + 1)
    if len(raw) > limit:
        raise click.BadParameter(f"a secret's value is at most {limit} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise click.BadParameter("a secret's value must be UTF-8 text") from None


@secret.command("set")
@click.argument("name", type=TEXT)
@click.option(
    "--from-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the value from this file (default: stdin).",
)
@pass_ctx
def set_secret(ctx: Context, name: str, from_file: Path | None) -> None:
    """Set a secret's value (a new version), read from stdin or --from-file.

    The apps that use it roll out the new version, canaried, like any change.

    Example: docklet secret set db-password --from-file ./db-password.txt
    """
    value = _read_value(from_file)
    if value.endswith("\n"):  # `echo pw |` sends one: kept, as a file's last line break is
        click.echo(
            "! the value ends with a line break, which is kept (printf %s strips it)", err=True
        )
    answer = ctx.call("PUT", _path(name), SET, {"value": value})
    used = ", ".join(answer["apps"]) or "no app yet"
    click.echo(f"✔ Secret {answer['name']} v{answer['version']} set (used by {used})")


@secret.command("list")
@json_option
@pass_ctx
def list_secrets(ctx: Context, as_json: bool) -> None:
    """List secrets: names, versions, when set, which apps use them (never values).

    Example: docklet secret list --json
    """
    rows = ctx.call("GET", "/api/secrets", [SECRET])
    if as_json:
        print_json(rows)
        return
    now = time.time()
    table(
        ("NAME", "VERSION", "KEPT", "UPDATED", "APPS"),
        [
            (
                s["name"],
                f"v{s['version']}",
                str(len(s["versions"])),
                f"{max(0, now - s['updated_at']):.0f}s ago",
                ", ".join(s["apps"]) or "-",
            )
            for s in rows
        ],
    )


@secret.command("rm")
@click.argument("name", type=TEXT)
@pass_ctx
def remove_secret(ctx: Context, name: str) -> None:
    """Remove a secret and all its versions (refused while an app uses it).

    Example: docklet secret rm old-api-key
    """
    ctx.call("DELETE", _path(name), REMOVED)
    click.echo(f"✔ Secret {name} removed")
