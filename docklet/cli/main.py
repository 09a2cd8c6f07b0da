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
from collections.abc import Callable, Hashable, Iterator
from enum import IntEnum
from functools import cached_property
from typing import Any
from urllib.parse import quote

import click

from docklet import __version__
from docklet.common import defaults
from docklet.common.errors import APIError, CPUnreachable, DockletError
from docklet.wire.client import NULL, NUMBER, Client, Shape, bad_answer, check_url


class ExitCode(IntEnum):
    """What `docklet` exits with; scripts may rely on these."""

    OK = 0
    ERROR = 1  # the request worked but the outcome did not (a deploy or a rollout failed)
    USAGE = 2  # bad command-line arguments (click's own code)
    UNREACHABLE = 3  # no answer from the control plane
    CLIENT_ERROR = 4  # the control plane refused the request (HTTP 4xx)
    SERVER_ERROR = 5  # the control plane failed (HTTP 5xx)
    TIMEOUT = 6  # waited, and the app did not run, or its rollout did not finish, in time
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class Failed(click.ClickException):
    """An outcome to report as one line (on stderr, after `mark`) and an exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR, mark: str = "✖") -> None:
        super().__init__(message)
        self.exit_code = code
        self.mark = mark

    def show(self, file: Any = None) -> None:
        click.echo(f"{self.mark} {self.message}", err=True)


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


def wait_options(detach_help: str, default: float, what: str) -> Callable[..., Any]:
    """-d/--detach and --timeout, for commands that wait for an outcome."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = click.option(
            "--timeout",
            type=click.FloatRange(0, 86400),
            default=default,
            show_default=True,
            help=f"Seconds to wait for {what}.",
        )(func)
        return click.option("--detach", "-d", is_flag=True, help=detach_help)(func)

    return decorate


def _check_timeout(timeout: float) -> None:
    if not math.isfinite(timeout):  # FloatRange lets nan through
        raise click.BadParameter("must be a number of seconds", param_hint="--timeout")


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def _quiet(line: str) -> None:
    """Where progress lines go under --json: stdout holds one JSON document."""


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
    "desired": str,
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
    _check_timeout(timeout)
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


def _wait_running(
    ctx: Context, name: str, timeout: float, say: Callable[[str], None] = click.echo
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        app = ctx.call("GET", _app_path(name), APP)
        if app["desired"] == "stopped":  # an update of a stopped app: nothing will run
            say(f"✔ {name} is stopped: docklet start {name} runs it")
            return
        if app["replicas"] == 0:
            say(f"✔ {name} has 0 replicas: nothing to run")
            return
        if app["actual"] == "running":
            where = ", ".join(app["nodes"])
            say(f"✔ Running on {where} ({app['running']}/{app['replicas']})")
            return
        if app["errors"]:
            error = app["errors"][0]
            raise Failed(f"Deploy failed on {error['node_id']}: {error['error']}")
        if time.monotonic() > deadline:
            reason = app["last_error"] or f"app is {app['actual']}"
            raise Failed(f"{name} is not running after {timeout:g}s: {reason}", ExitCode.TIMEOUT)
        time.sleep(0.1)


# -- rollouts: update, rollback, rollout retry, and following one -------------------

ROLLOUT_WAIT = 600.0  # how long a command follows a rollout; the CP fails a stalled one itself
POLL_INTERVAL = 0.3  # seconds between two reads of a rollout being followed

# A rollout as following one reads it (GET /api/apps/NAME/rollouts/ID).
ROLLOUT: Shape = {
    "id": int,
    "app": str,
    "revision": str,
    "status": str,
    "terminal": bool,
    "canary_node": (str, NULL),
    "canary_slot": (int, NULL),
    "done": int,
    "total": int,
    "reason": (str, NULL),
    "failed_phase": (str, NULL),
}
# The answer to update, rollback and rollout retry: the app's view after the change.
CHANGED_APP: Shape = {
    "name": str,
    "revision": (str, NULL),
    "commit": (str, NULL),
    "held": (str, NULL),
    "rollout": (ROLLOUT, NULL),
}
# Rollout statuses once a rollout has failed (rolling back, or done failing).
FAILING = ("rolling_back", "rolled_back", "rollback_failed", "failed")
CANARY_PHASES = ("canary", "verifying")
TRIGGERED = "🔥 Triggering rollout..."


def _changed_app(
    ctx: Context,
    name: str,
    path: str,
    body: Any,
    *,
    said: str,
    detach: bool,
    timeout: float,
    as_json: bool,
    follow_unchanged: bool = False,
) -> None:
    """POST a change that starts a rollout, then follow it to its verdict.

    A held spec is an error; an unchanged one (no commit) is done, unless
    `follow_unchanged` (a retry commits nothing: it releases the hold).
    """
    app = ctx.call("POST", path, CHANGED_APP, body)
    if app["name"] != name:  # a ✔ must be about the app the user named
        raise bad_answer(ctx.client.base_url + path, f"it is about app {app['name']!r}")
    say = _quiet if as_json else click.echo
    if app["held"]:
        if as_json:
            _print_json(app)
        raise Failed(app["held"])
    if app["commit"] is None and not follow_unchanged:
        if as_json:
            _print_json(app)
        else:
            click.echo(f"✔ {name} is unchanged ({app['revision'] or 'no revision'})")
        return
    say(said)
    latest = first = app["rollout"]
    if detach:
        if as_json:
            _print_json(app)
        return
    try:
        if first is None:  # no rollout (a stopped app, a first revision): wait as run does
            _wait_running(ctx, name, timeout, say)
            return
        said_already: set[Hashable] = set()
        for latest in _rollout_states(ctx, name, first, timeout):
            for key, line in _progress(latest):
                if key not in said_already:
                    said_already.add(key)
                    say(line)
    finally:
        if as_json:  # the answer, with the rollout as last seen
            _print_json({**app, "rollout": latest})
    _verdict(name, latest, timeout, say)


def _rollout_states(
    ctx: Context, name: str, first: dict[str, Any], timeout: float
) -> Iterator[dict[str, Any]]:
    """The rollout as it changes, until it is terminal or `timeout` has passed.

    The rollout goes on in the CP whatever this CLI sees: a CP that does not
    answer for a while (it restarts) is asked again until the deadline.
    """
    path = _app_path(name, f"/rollouts/{first['id']}")
    deadline = time.monotonic() + timeout
    state = first
    while True:
        if state["app"] != name or state["id"] != first["id"]:
            which = f"rollout {state['id']} of app {state['app']!r}"
            raise bad_answer(ctx.client.base_url + path, f"it is about {which}")
        yield state
        if state["terminal"] or time.monotonic() >= deadline:
            return
        time.sleep(POLL_INTERVAL)
        try:
            state = ctx.call("GET", path, ROLLOUT)
        except CPUnreachable:
            if time.monotonic() >= deadline:
                raise


def _progress(r: dict[str, Any]) -> list[tuple[Hashable, str]]:
    """The lines a rollout's state calls for, each with a key: a line is said once."""
    status, revision = r["status"], r["revision"]
    if status == "pending":
        return [("pending", f"… rollout of {revision} pending")]
    if status == "canary":
        where = ": placing it"
        if r["canary_node"]:
            slot = f" (slot {r['canary_slot']})" if r["canary_slot"] is not None else ""
            where = f" on {r['canary_node']}{slot}"
        return [(("canary", r["canary_node"]), f"… canary {revision}{where}")]
    if status == "verifying":
        return [("verifying", "… canary running, verifying health")]
    if status == "promoting":
        return [(("promoting", r["done"]), f"… promoting {r['done']}/{r['total']}")]
    if status in FAILING:
        lines: list[tuple[Hashable, str]] = [("failure", _failure(r))]
        if status != "failed":  # failed: automatic rollback is off
            lines.append(("rolling_back", "↩ Rolling back to previous revision"))
        return lines
    if status in ("stable", "superseded") or r["terminal"]:
        return []  # the verdict says it
    return [(("status", status), f"… {status}")]  # a phase this CLI does not know yet


def _failure(r: dict[str, Any]) -> str:
    if r["failed_phase"] in CANARY_PHASES:
        return "✖ Canary failed"
    if r["failed_phase"] == "promoting":
        return f"✖ Rollout failed at {r['done']}/{r['total']}"
    return "✖ Rollout failed"


def _verdict(name: str, r: dict[str, Any], timeout: float, say: Callable[[str], None]) -> None:
    """The last line of a followed rollout; anything but stable is a Failed."""
    status, app = r["status"], f"{name} {r['revision']}"
    reason = r["reason"] or "no reason given"
    if status == "stable":
        say(f"✔ {app} is stable ({r['done']}/{r['total']})")
        return
    if not r["terminal"]:
        raise Failed(
            f"{app} is still {status} ({r['done']}/{r['total']}) after {timeout:g}s;"
            f" follow it with: docklet rollout status {name}",
            ExitCode.TIMEOUT,
        )
    if status == "rolled_back":
        raise Failed(f"{app} rolled back: {reason}")
    if status == "rollback_failed":
        raise Failed(f"{app}: rollback failed: {reason}")
    if status == "superseded":
        raise Failed(f"{app} was superseded by a newer revision", mark="!")
    if status == "failed":
        raise Failed(f"{app} failed: {reason}")
    raise Failed(f"{app} ended {status}: {reason}")


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
    _check_timeout(timeout)
    body: dict[str, Any] = {}
    if image is not None:
        body["image"] = image
    if replicas is not None:
        body["replicas"] = replicas
    if ports:
        body["ports"] = list(ports)
    if env:
        body["env"] = _parse_env(env)
    if command is not None:
        body["command"] = command
    if not body:
        raise click.UsageError("nothing to update: give --image, --replicas, -e, -p or --command")
    _changed_app(
        ctx,
        name,
        _app_path(name, "/update"),
        body,
        said=TRIGGERED,
        detach=detach,
        timeout=timeout,
        as_json=as_json,
    )


REVISION_STATUS: Shape = {"revision": str, "status": str}


@cli.command()
@name_argument
@click.option("--to", "to", type=TEXT, metavar="vN", help="Default: the previous stable revision.")
@wait_options("Return once the rollout is triggered.", ROLLOUT_WAIT, "the rollout to finish")
@json_option
@pass_ctx
def rollback(
    ctx: Context, name: str, to: str | None, detach: bool, timeout: float, as_json: bool
) -> None:
    """Go back to an earlier revision, then follow its rollout.

    The earlier revision's spec is committed again, as a new revision; see
    the revisions with `docklet history NAME`. Exits like `docklet update`.

    Example: docklet rollback nginx --to v2
    """
    _check_timeout(timeout)
    target = to or _previous_stable(ctx, name)
    _changed_app(
        ctx,
        name,
        _app_path(name, "/rollback"),
        {"to": to} if to else {},
        said=f"↩ Rolling back {name} to {target or 'the previous stable revision'}",
        detach=detach,
        timeout=timeout,
        as_json=as_json,
    )


def _previous_stable(ctx: Context, name: str) -> str | None:
    """The revision a rollback without --to goes to, as the CP decides it: named, not sent."""
    revisions = ctx.call("GET", _app_path(name, "/revisions"), [REVISION_STATUS])
    # Newest first: the stable one runs now; the CP goes to the next older that ran.
    running = next((i for i, r in enumerate(revisions) if r["status"] == "stable"), None)
    if running is None:
        return None
    for revision in revisions[running + 1 :]:
        if revision["status"] in ("stable", "replaced"):
            return str(revision["revision"])
    return None


@cli.group("rollout")
def rollout_group() -> None:
    """See and retry an app's rollouts.

    Example: docklet rollout status nginx
    """


# What `docklet rollout status` shows besides what following a rollout reads.
ROLLOUT_DETAIL: Shape = {
    **ROLLOUT,
    "from_revision": (str, NULL),
    "deadline": (*NUMBER, NULL),
    "progress_deadline": NUMBER,
    "finished_at": (*NUMBER, NULL),
    "evidence": {
        "error": (str, NULL),
        "exit_code": (int, NULL),
        "health": (str, NULL),
        "logs": (str, NULL),
    },
}
LOG_LINES = 20  # the last lines of a failed container's log that `rollout status` shows


@rollout_group.command("status")
@name_argument
@json_option
@pass_ctx
def rollout_status(ctx: Context, name: str, as_json: bool) -> None:
    """Show an app's latest rollout and why it failed.

    Its phase, revisions, canary, progress, deadlines, and the evidence of a
    failure: the exit code, the health, the last lines of the container's log.

    Example: docklet rollout status nginx
    """
    rollouts = ctx.call("GET", _app_path(name, "/rollouts"), [ROLLOUT_DETAIL])
    latest = rollouts[0] if rollouts else None
    if as_json:
        _print_json(latest)
        return
    if latest is None:
        click.echo(f"{name} has had no rollout yet")
        return
    r = latest
    rows = [
        ("rollout", f"{r['id']}: {r['from_revision'] or '-'} → {r['revision']}"),
        ("status", r["status"]),
    ]
    if r["canary_node"]:
        slot = f" (slot {r['canary_slot']})" if r["canary_slot"] is not None else ""
        rows.append(("canary", f"{r['canary_node']}{slot}"))
    rows.append(("progress", f"{r['done']}/{r['total']}"))
    if r["terminal"]:
        if r["finished_at"] is not None:
            rows.append(("finished", f"{_duration(time.time() - r['finished_at'])} ago"))
    else:
        if r["deadline"] is not None:
            rows.append(("phase deadline", _until(r["deadline"])))
        rows.append(("progress deadline", _until(r["progress_deadline"])))
    if r["failed_phase"]:
        rows.append(("failed in", r["failed_phase"]))
    if r["reason"]:
        rows.append(("reason", r["reason"]))
    evidence = r["evidence"]
    if evidence["error"]:
        rows.append(("error", evidence["error"]))
    if evidence["exit_code"] is not None:
        rows.append(("exit code", str(evidence["exit_code"])))
    if evidence["health"]:
        rows.append(("health", evidence["health"]))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        click.echo(f"{label.ljust(width)}   {value}")
    if evidence["logs"]:
        lines = evidence["logs"].rstrip("\n").splitlines()[-LOG_LINES:]
        click.echo(f"last log lines ({len(lines)}):")
        for line in lines:
            click.echo(f"    {line}")


def _until(when: float) -> str:
    left = when - time.time()
    return f"in {_duration(left)}" if left > 0 else "passed"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@rollout_group.command("retry")
@name_argument
@wait_options("Return once the rollout is triggered.", ROLLOUT_WAIT, "the rollout to finish")
@json_option
@pass_ctx
def rollout_retry(ctx: Context, name: str, detach: bool, timeout: float, as_json: bool) -> None:
    """Roll out a held spec again, then follow its rollout.

    A spec is held when the same container spec failed before; `docklet ps`
    says which. Exits like `docklet update`.

    Example: docklet rollout retry nginx
    """
    _check_timeout(timeout)
    _changed_app(
        ctx,
        name,
        _app_path(name, "/rollouts/retry"),
        None,
        said=TRIGGERED,
        detach=detach,
        timeout=timeout,
        as_json=as_json,
        follow_unchanged=True,
    )


REVISION: Shape = {
    "revision": str,
    "status": str,
    "image": (str, NULL),
    "image_digest": (str, NULL),
    "commit_sha": (str, NULL),
    "author": (str, NULL),
    "message": (str, NULL),
    "reason": (str, NULL),
}


@cli.command()
@name_argument
@json_option
@pass_ctx
def history(ctx: Context, name: str, as_json: bool) -> None:
    """List an app's revisions, newest first, and why any failed.

    Example: docklet history nginx
    """
    revisions = ctx.call("GET", _app_path(name, "/revisions"), [REVISION])
    if as_json:
        _print_json(revisions)
        return
    _table(
        ("REVISION", "STATUS", "IMAGE", "DIGEST", "COMMIT", "AUTHOR", "MESSAGE"),
        [
            (
                r["revision"],
                r["status"],
                r["image"] or "-",
                _short_digest(r["image_digest"]),
                (r["commit_sha"] or "-")[:8],
                (r["author"] or "-").split(" <", 1)[0],
                _first_line(r["message"]),
            )
            for r in revisions
        ],
    )
    for r in revisions:
        if r["reason"]:
            click.echo(f"{r['revision']}: {r['reason']}")


def _short_digest(digest: str | None) -> str:
    """sha256:0123456789abcdef… → 0123456789ab, as docker images shows IDs."""
    return digest.rpartition(":")[2][:12] if digest else "-"


def _first_line(message: str | None, width: int = 60) -> str:
    line = (message or "").strip().split("\n", 1)[0]
    return line if len(line) <= width else line[: width - 1] + "…"


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
        click.echo(json.dumps(ctx.call("GET", "/api/state/apps", [APPS]), indent=2))
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
    _table(COLUMNS, rows)
    for a in apps:
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


from docklet.cli import auth as cli_auth  # noqa: E402  (its commands join the group defined above)


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
