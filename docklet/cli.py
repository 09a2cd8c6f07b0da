"""The `docklet` command: a thin client of the control plane's REST API.

It never touches the database or the repository; every command is one or a
few HTTP calls. Errors are one line on stderr and an exit code from ExitCode.
Each command says which keys of an answer it reads (a client Shape), so an
answer it cannot use is reported as such, and a bug of the CLI stays a bug.
"""

from __future__ import annotations

import getpass
import json
import math
import re
import socket
import sys
import time
from collections.abc import Callable
from enum import IntEnum
from functools import cached_property
from typing import Any
from urllib.parse import quote

import click

from docklet import __version__, defaults
from docklet.client import NULL, NUMBER, Client, Shape, bad_answer, check_url
from docklet.errors import APIError, CPUnreachable, DockletError


class ExitCode(IntEnum):
    """What `docklet` exits with; scripts may rely on these."""

    OK = 0
    ERROR = 1  # the request worked but the outcome did not (a deploy failed)
    USAGE = 2  # bad command-line arguments (click's own code)
    UNREACHABLE = 3  # no answer from the control plane
    CLIENT_ERROR = 4  # the control plane refused the request (HTTP 4xx)
    SERVER_ERROR = 5  # the control plane failed (HTTP 5xx)
    TIMEOUT = 6  # waited, and the app did not reach the state asked for
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class Failed(click.ClickException):
    """An outcome to report as one line and an exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.exit_code = code

    def show(self, file: Any = None) -> None:
        click.echo(f"✖ {self.message}", err=True)


def _exit_code(exc: DockletError) -> ExitCode:
    """The one place errors become exit codes."""
    if isinstance(exc, CPUnreachable):
        return ExitCode.UNREACHABLE
    if isinstance(exc, APIError) and 400 <= exc.status < 500:
        return ExitCode.CLIENT_ERROR
    return ExitCode.SERVER_ERROR


def _message(exc: DockletError) -> str:
    """An error as its one line: the HTTP status first when there was an answer."""
    return exc.message if isinstance(exc, CPUnreachable) else f"{exc.status}: {exc.message}"


class DockletGroup(click.Group):
    """The group every command runs in: its DockletErrors leave by one path, _exit_code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DockletError as exc:
            raise Failed(_message(exc), _exit_code(exc)) from None


class Context:
    def __init__(self, cp: str) -> None:
        self.cp = cp
        self.token_source = ""  # "env", "stored" or "" (none yet)

    @cached_property
    def client(self) -> Client:
        # Checked when first used, so `docklet ps --help` works with a bad DOCKLET_CP.
        problem = check_url(self.cp)
        if problem:
            raise click.BadParameter(problem, param_hint="'--cp' / DOCKLET_CP")
        user = f"{getpass.getuser()}@{socket.gethostname()}"
        # Sent as an HTTP header, which is ASCII: "josé" is recorded as "jos_".
        client = Client(self.cp, user=re.sub(r"[^\w.@+-]", "_", user, flags=re.ASCII)[:64])
        client.token, self.token_source = cli_auth.stored_token(self.cp)
        return client

    def call(self, method: str, path: str, expect: Any, body: Any = None) -> Any:
        """The answer, checked against `expect` (a Shape, or [Shape] for a list)."""
        try:
            return self.client.request(method, path, body, expect=expect)
        except APIError as exc:
            # No credential yet: a fresh cluster's first command logs in by itself.
            if exc.status != 401 or self.token_source or not cli_auth.auto_login(self):
                raise
            return self.client.request(method, path, body, expect=expect)


pass_ctx = click.make_pass_decorator(Context)


class Text(click.ParamType):
    """A string argument that can be sent: not the undecodable bytes of a non-UTF-8 argv."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # Python hands undecodable argv bytes over as lone surrogates; show the bytes.
            shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            self.fail(f"'{shown}' is not valid UTF-8 text", param, ctx)
        return value


TEXT = Text()


def name_argument(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.argument("name", type=TEXT)(func)


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


@click.group(cls=DockletGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--cp",
    envvar="DOCKLET_CP",
    default=defaults.CP_URL,
    show_default=True,
    help="Control plane URL (or set DOCKLET_CP).",
)
@click.version_option(__version__, prog_name="docklet")
@click.pass_context
def cli(ctx: click.Context, cp: str) -> None:
    """Docklet: deploy containers to your Docker hosts from Git.

    Example: docklet run nginx && docklet ps
    """
    ctx.obj = Context(cp)


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
        error = {"error": _message(exc), "code": exc.code, "status": exc.status}
        if as_json:
            click.echo(json.dumps({"cli": __version__, "control_plane": error}))
        else:
            click.echo(f"docklet CLI     {__version__}")
            click.echo(f"control plane   unavailable ({error['error']})")
        raise click.exceptions.Exit(_exit_code(exc)) from None
    if as_json:
        click.echo(json.dumps({"cli": __version__, "control_plane": cp}))
        return
    click.echo(f"docklet CLI     {__version__}")
    click.echo(f"control plane   {cp['version']} (API {cp['api']}) at {ctx.client.base_url}")
    cli_auth.show_bootstrap(cp.get("bootstrap"))


CREATED: Shape = {"name": str, "tasks": list, "last_error": (str, NULL)}
APP: Shape = {
    "replicas": int,
    "actual": str,
    "running": int,
    "nodes": [str],
    "errors": [{"node_id": str, "error": (str, NULL)}],
    "last_error": (str, NULL),
}


@cli.command()
@click.argument("image", type=TEXT)
@click.option(
    "--name", type=TEXT, help="App name. Default: the image's name (nginx for nginx:1.25)."
)
@click.option("--replicas", type=click.IntRange(0, 1000), default=1, show_default=True)
@click.option(
    "-p",
    "--publish",
    "ports",
    type=TEXT,
    multiple=True,
    metavar="HOST:CONTAINER",
    help="Publish a port, as docker run -p.",
)
@click.option(
    "-e",
    "--env",
    "env",
    type=TEXT,
    multiple=True,
    metavar="KEY=VALUE",
    help="Set an environment variable.",
)
@click.option("--detach", "-d", is_flag=True, help="Return once the task is scheduled.")
@click.option(
    "--timeout",
    type=click.FloatRange(0, 86400),
    default=defaults.RUN_WAIT,
    show_default=True,
    help="Seconds to wait for the app to run.",
)
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

    Example: docklet run nginx -p 8080:80 --replicas 2
    """
    if not math.isfinite(timeout):
        raise click.BadParameter("must be a number of seconds", param_hint="--timeout")
    body: dict[str, Any] = {"image": image, "replicas": replicas}
    if name:
        body["name"] = name
    if ports:
        body["ports"] = list(ports)
    if env:
        body["env"] = _parse_env(env)
    app = ctx.call("POST", "/api/apps", CREATED, body)
    click.echo(f"✔ Creating deployment {app['name']}")
    if app["tasks"]:
        click.echo("✔ Task scheduled")
    elif app["last_error"]:
        click.echo(f"! Not scheduled yet: {app['last_error']}", err=True)
    if detach:
        return
    _wait_running(ctx, app["name"], timeout)


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="-e")
        env[key] = value
    return env


def _wait_running(ctx: Context, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        app = ctx.call("GET", _app_path(name), APP)
        if app["replicas"] == 0:
            click.echo(f"✔ {name} has 0 replicas: nothing to run")
            return
        if app["actual"] == "running":
            where = ", ".join(app["nodes"])
            click.echo(f"✔ Running on {where} ({app['running']}/{app['replicas']})")
            return
        if app["errors"]:
            error = app["errors"][0]
            raise Failed(f"Deploy failed on {error['node_id']}: {error['error']}")
        if time.monotonic() > deadline:
            reason = app["last_error"] or f"app is {app['actual']}"
            raise Failed(f"{name} is not running after {timeout:g}s: {reason}", ExitCode.TIMEOUT)
        time.sleep(0.1)


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
}
SYNC: Shape = {"errors": [{"message": str}]}


@cli.command()
@json_option
@pass_ctx
def ps(ctx: Context, as_json: bool) -> None:
    """List apps: desired state next to what actually runs.

    Example: docklet ps --json
    """
    apps = ctx.call("GET", "/api/state/apps", [APPS])
    if as_json:
        click.echo(json.dumps(apps, indent=2))
        return
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
    _table(COLUMNS, rows)
    for a in apps:
        for error in a["errors"]:
            click.echo(f"{a['name']}: slot {error['slot']} on {error['node_id']}: {error['error']}")
        if a["last_error"]:
            click.echo(f"{a['name']}: {a['last_error']}")
    for error in sync["errors"]:  # also files of apps that never had a valid spec
        click.echo(f"✖ {error['message']}")


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
        click.echo(json.dumps(rows, indent=2))
        return
    _table(
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


# The answer to an imperative command (api.edit_app): the commit is null if nothing changed.
CHANGED: Shape = {"app": str, "commit": (str, NULL)}


def _change(
    ctx: Context, method: str, name: str, action: str, done: str, unchanged: str, as_json: bool
) -> None:
    """One imperative command: a commit on the CP, then one line (or its JSON)."""
    path = _app_path(name, action)
    app = ctx.call(method, path, CHANGED)
    if app["app"] != name:  # a ✔ must be about the app the user named
        raise bad_answer(ctx.client.base_url + path, f"it is about app {app['app']!r}")
    if as_json:
        click.echo(json.dumps(app, indent=2))
    else:
        click.echo(f"✔ {done}" if app["commit"] else f"✔ {unchanged}")


def _app_path(name: str, action: str = "") -> str:
    return f"/api/apps/{quote(name, safe='')}{action}"


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


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(v)) for v in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        click.echo("   ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False)).rstrip())


from docklet import cli_auth  # noqa: E402  (its commands join the group defined above)


def main() -> None:
    try:
        # Without standalone mode click returns the code of a ctx.exit(code), not raising it.
        code = cli(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else ExitCode.OK)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    # Nothing else is caught: answers are checked where they are read (client Shapes),
    # so any other exception is a bug of the CLI and keeps its traceback.
