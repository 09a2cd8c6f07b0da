"""`docklet run`, `update`, `ps`, `stop`, `start` and `rm`: an app's spec and what runs of it.

Each one commits a change to the desired-state repo through the CP (or reads the
CP's view), then says the outcome in a line; `run` and `update` follow it (monitor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from docklet.cli.base import (
    TEXT,
    Context,
    app_path,
    check_timeout,
    cli,
    json_option,
    name_argument,
    pass_ctx,
    print_json,
    table,
    wait_options,
)
from docklet.cli.monitor import FAILING, ROLLOUT_WAIT, TRIGGERED, changed_app, wait_running
from docklet.common import defaults
from docklet.wire.client import NULL, Shape, bad_answer

CREATED: Shape = {"name": str, "tasks": list, "last_error": (str, NULL)}


def spec_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The spec fields `run` and `update` both take: -p and -e."""
    func = click.option(
        "-e",
        "--env",
        "env",
        type=TEXT,
        multiple=True,
        metavar="KEY=VALUE",
        help="Set an environment variable.",
    )(func)
    return click.option(
        "-p",
        "--publish",
        "ports",
        type=TEXT,
        multiple=True,
        metavar="HOST:CONTAINER",
        help="Publish a port, as docker run -p.",
    )(func)


@cli.command()
@click.argument("image", type=TEXT)
@click.option(
    "--name", type=TEXT, help="App name. Default: the image's name (nginx for nginx:1.25)."
)
@click.option("--replicas", type=click.IntRange(0, 1000), default=1, show_default=True)
@spec_options
@wait_options("Return once the task is scheduled.", defaults.RUN_WAIT, "the app to run")
@pass_ctx
def run(
    ctx: Context,
    image: str,
    name: str | None,
    replicas: int,
    ports: tuple[str, ...],
    env: tuple[str, ...],
    detach: bool,
    timeout: float,
) -> None:
    """Deploy IMAGE as a new app (committed to the desired-state repo).

    Waits until it runs; change it later with `docklet update`.

    Example: docklet run nginx -p 8080:80 --replicas 2
    """
    check_timeout(timeout)
    body: dict[str, Any] = {"image": image, "replicas": replicas}
    if name:
        body["name"] = name
    if ports:
        body["ports"] = list(ports)
    if env:
        body["env"] = parse_env(env)
    app = ctx.call("POST", "/api/apps", CREATED, body)
    click.echo(f"✔ Creating deployment {app['name']}")
    if app["tasks"]:
        click.echo("✔ Task scheduled")
    elif app["last_error"]:
        click.echo(f"! Not scheduled yet: {app['last_error']}", err=True)
    if detach:
        return
    wait_running(ctx, app["name"], timeout)


def parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="-e")
        env[key] = value
    return env


@cli.command()
@name_argument
@click.option("--image", type=TEXT, help="The new image, e.g. nginx:1.26.")
@click.option("--replicas", type=click.IntRange(0, 1000), help="The new number of replicas.")
@spec_options
@click.option(
    "--command",
    type=TEXT,
    help="The container's command, as a shell string (replaces the image's CMD).",
)
@wait_options("Return once the rollout is triggered.", ROLLOUT_WAIT, "the rollout to finish")
@json_option
@pass_ctx
def update(
    ctx: Context,
    name: str,
    image: str | None,
    replicas: int | None,
    ports: tuple[str, ...],
    env: tuple[str, ...],
    command: str | None,
    detach: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Change an app's spec, then follow its rollout.

    The rollout starts one canary replica on one node, waits until it is
    healthy, then replaces the other replicas; a failure rolls back to the
    previous revision. Only the fields given change; -e and -p replace the app's whole env and
    port list, so give them all. Exits 1 if the rollout fails (rolled back,
    superseded, ...) and 6 if it has not finished within --timeout.

    Example: docklet update nginx --image nginx:1.26
    """
    check_timeout(timeout)
    body = _update_body(image, replicas, ports, env, command)
    changed_app(
        ctx,
        name,
        app_path(name, "/update"),
        body,
        said=TRIGGERED,
        detach=detach,
        timeout=timeout,
        as_json=as_json,
    )


def _update_body(
    image: str | None,
    replicas: int | None,
    ports: tuple[str, ...],
    env: tuple[str, ...],
    command: str | None,
) -> dict[str, Any]:
    """The fields `update` sends: only those given change."""
    body: dict[str, Any] = {}
    if image is not None:
        body["image"] = image
    if replicas is not None:
        body["replicas"] = replicas
    if ports:
        body["ports"] = list(ports)
    if env:
        body["env"] = parse_env(env)
    if command is not None:
        body["command"] = command
    if not body:
        raise click.UsageError("nothing to update: give --image, --replicas, -e, -p or --command")
    return body


COLUMNS = ("NAME", "REVISION", "DESIRED", "ACTUAL", "NODE", "STATUS")
APPS: Shape = {
    "name": str,
    "revision": (str, NULL),
    "desired": str,
    "actual": str,
    "nodes": [str],
    "status": str,
    "errors": [{"slot": (int, NULL), "node_id": str, "error": (str, NULL)}],
    "last_error": (str, NULL),
    "running_revision": (str, NULL),
    "held": (str, NULL),
    "rollout": ({"status": str}, NULL),
}
SYNC: Shape = {"errors": [{"message": str}]}


@cli.command()
@json_option
@pass_ctx
def ps(ctx: Context, as_json: bool) -> None:
    """List apps: desired state next to what actually runs.

    REVISION is the desired revision and STATUS where its rollout is
    (stable, rolling_update, rolling_back, failed, deploying). Below the
    table: failed deploys, revisions that failed while an older one runs,
    held specs, and spec files that do not validate.

    Example: docklet ps --json
    """
    if as_json:
        print_json(ctx.call("GET", "/api/state/apps", [APPS]))
        return
    # The table needs no instances: with thousands of containers they are most of the answer.
    apps = ctx.call("GET", "/api/state/apps?brief=true", [APPS])
    sync = ctx.call("GET", "/api/state/sync", SYNC)
    rows = [
        (
            a["name"],
            a["revision"] or "-",
            a["desired"],
            a["actual"],
            ",".join(a["nodes"]) or "-",
            a["status"],
        )
        for a in apps
    ]
    table(COLUMNS, rows)
    for a in apps:
        _say_troubles(a)
    for error in sync["errors"]:  # also files of apps that never had a valid spec
        click.echo(f"✖ {error['message']}")


def _say_troubles(a: dict[str, Any]) -> None:
    """The lines below the table about one app: failed deploys, a failed revision, a hold."""
    for error in a["errors"]:
        click.echo(f"{a['name']}: slot {error['slot']} on {error['node_id']}: {error['error']}")
    if a["last_error"]:
        click.echo(f"{a['name']}: {a['last_error']}")
    failed = a["rollout"] is not None and a["rollout"]["status"] in FAILING
    desired = a.get("target_revision") or a["revision"]
    if failed and desired != a["running_revision"]:
        running = a["running_revision"] or "nothing"
        click.echo(f"{a['name']}: desired {desired} failed, running {running}")
    if a["held"]:
        click.echo(f"{a['name']}: {a['held']}")


# The answer to an imperative command (api.edit_app): the commit is null if nothing changed.
CHANGED: Shape = {"app": str, "commit": (str, NULL)}


def _change(
    ctx: Context, method: str, name: str, action: str, done: str, unchanged: str, as_json: bool
) -> None:
    """One imperative command: a commit on the CP, then one line (or its JSON)."""
    path = app_path(name, action)
    app = ctx.call(method, path, CHANGED)
    if app["app"] != name:  # a ✔ must be about the app the user named
        raise bad_answer(ctx.client.base_url + path, f"it is about app {app['app']!r}")
    if as_json:
        print_json(app)
    else:
        click.echo(f"✔ {done}" if app["commit"] else f"✔ {unchanged}")


@cli.command()
@name_argument
@json_option
@pass_ctx
def stop(ctx: Context, name: str, as_json: bool) -> None:
    """Stop an app's containers (they are kept).

    Example: docklet stop nginx
    """
    _change(
        ctx,
        "POST",
        name,
        "/stop",
        f"Stopping {name}",
        f"{name} is already stopped",
        as_json,
    )


@cli.command()
@name_argument
@json_option
@pass_ctx
def start(ctx: Context, name: str, as_json: bool) -> None:
    """Start a stopped app again.

    Example: docklet start nginx
    """
    _change(
        ctx,
        "POST",
        name,
        "/start",
        f"Starting {name}",
        f"{name} is already running",
        as_json,
    )


@cli.command()
@name_argument
@json_option
@pass_ctx
def rm(ctx: Context, name: str, as_json: bool) -> None:
    """Remove an app: its file, then its containers.

    Example: docklet rm nginx
    """
    _change(ctx, "DELETE", name, "", f"Removing {name}", f"{name} is removed", as_json)
