"""`docklet-cp token create`, `docklet-cp secrets rotate-key`: the host's operator, where
the data is.

Once the last admin token is revoked (or lost) no API call can make another;
whoever can read the control plane's data directory can. This writes to the
database directly, with the control plane stopped or running: SQLite in WAL
mode takes a second writer, and a running control plane looks tokens up in
the database on every call, so the new token works at once.
"""

from __future__ import annotations

from pathlib import Path

import click

from docklet.common.errors import BadRequest, Conflict, NotFound, SecretKeyError
from docklet.common.status import TokenScope
from docklet.cp.service import secrets as secret_service
from docklet.cp.service.tokens import Tokens
from docklet.cp.settings import CPConfig
from docklet.cp.store.db import Store

OFFLINE = "the host's operator (docklet-cp token create, offline)"


def _existing(data_dir: Path) -> CPConfig:
    config = CPConfig(data_dir=data_dir)
    if not config.db_path.is_file():  # a typo must not make an empty cluster
        raise NotFound(
            f"no control plane data in {data_dir} (no {config.db_path.name}): give --data-dir"
            " the directory docklet-cp serves from"
        )
    return config


def mint(data_dir: Path, name: str, scope: str) -> str:
    """A new API token in the cluster whose data is in `data_dir`; its secret, once."""
    config = _existing(data_dir)
    store = Store(config.db_path)
    try:
        return Tokens(store, config).create(name, TokenScope(scope), OFFLINE)
    finally:
        store.close()


@click.group()
def token() -> None:
    """API tokens, minted on the control plane's host (no API call, no token needed).

    Example: docklet-cp token create rescue --scope admin --data-dir /data
    """


# The offline commands work on the CP's data directory, as docklet-cp itself does.
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    envvar="DOCKLET_DATA_DIR",
    help="The control plane's data directory (default: docklet-cp's own --data-dir).",
)


@token.command("create")
@click.argument("name")
@click.option("--scope", type=click.Choice(["read", "admin"]), default="read", show_default=True)
@data_dir_option
@click.pass_context
def create(ctx: click.Context, name: str, scope: str, data_dir: Path | None) -> None:
    """Create an API token in the database; it is printed only now, alone on stdout.

    Run where the data is, with the control plane stopped or running.

    Example: docklet-cp token create rescue --scope admin --data-dir /data
    """
    where = data_dir or (ctx.obj or {}).get("data_dir")
    if where is None:
        raise click.UsageError("give --data-dir: where docklet-cp keeps its data")
    try:
        secret = mint(Path(where), name, scope)
    except BadRequest as exc:
        raise click.BadParameter(exc.message, param_hint="NAME") from None
    except NotFound as exc:
        raise click.UsageError(exc.message) from None
    except Conflict as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"✔ Token {name} ({scope}); it is shown only now:", err=True)
    click.echo(secret)


def rotate(data_dir: Path) -> int:
    """Re-seal every secret of the cluster in `data_dir` under a new key; how many versions."""
    config = _existing(data_dir)
    store = Store(config.db_path)
    try:
        return secret_service.rotate_key(store, config)
    finally:
        store.close()


@click.group("secrets")
def secrets_group() -> None:
    """The key the control plane seals secrets with (docklet secret set).

    Example: docklet-cp secrets rotate-key --data-dir /data
    """


@secrets_group.command("rotate-key")
@data_dir_option
@click.pass_context
def rotate_key(ctx: click.Context, data_dir: Path | None) -> None:
    """Re-encrypt every secret version under a new key, then swap the key file atomically.

    Run where the data is, with the control plane stopped or running (it reads the new
    key file when it next opens a value). With DOCKLET_SECRET_KEY set, the new key is
    left in secret.key.new: put it in DOCKLET_SECRET_KEY and restart the control plane.

    Example: docklet-cp secrets rotate-key --data-dir /data
    """
    where = data_dir or (ctx.obj or {}).get("data_dir")
    if where is None:
        raise click.UsageError("give --data-dir: where docklet-cp keeps its data")
    try:
        count = rotate(Path(where))
    except NotFound as exc:
        raise click.UsageError(exc.message) from None
    except SecretKeyError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"✔ {count} secret version(s) re-encrypted under a new key", err=True)
