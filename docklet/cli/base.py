"""What every `docklet` command shares: the group, its Context, exit codes, options, output.

The command modules (apps, rollouts, nodes, auth, version) add their commands to
`cli`; cli.main imports them all. This module imports none of them, so no command
module imports back into what it joins. Errors leave by one path: DockletErrors
become an ExitCode in DockletGroup.invoke, and `run_command` turns every other
outcome into its code.
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
from typing import Any, NoReturn
from urllib.parse import quote

import click

from docklet import __version__
from docklet.cli import credentials
from docklet.cli.completion import complete_apps
from docklet.common import defaults
from docklet.common.errors import APIError, CPUnreachable, DockletError
from docklet.wire.client import Client, Shape, check_url


class ExitCode(IntEnum):
    """What `docklet` exits with; scripts may rely on these."""

    OK = 0
    ERROR = 1  # the request worked but the outcome did not (a deploy or a rollout failed)
    USAGE = 2  # bad command-line arguments (click's own code)
    UNREACHABLE = 3  # no answer from the control plane
    CLIENT_ERROR = 4  # the control plane refused the request (HTTP 4xx)
    SERVER_ERROR = 5  # the control plane failed (HTTP 5xx)
    TIMEOUT = 6  # waited, and the app did not run, or its rollout did not finish, in time
    # `docklet logs`: what it would show is not there, told apart from a refusal (4) so a
    # script knows whether to wait and retry.
    NO_CONTAINERS = 7  # the app (or the slot, node or revision asked for) has no containers
    NODE_OFFLINE = 8  # the nodes running them are offline
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class Failed(click.ClickException):
    """An outcome to report as one line (on stderr, after `mark`) and an exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR, mark: str = "✖") -> None:
        super().__init__(message)
        self.exit_code = code
        self.mark = mark

    def show(self, file: Any = None) -> None:
        click.echo(f"{self.mark} {self.message}", err=True)


# API error codes with an exit code of their own (else the HTTP status decides).
CODE_EXITS = {"no_containers": ExitCode.NO_CONTAINERS, "node_offline": ExitCode.NODE_OFFLINE}


def exit_code(exc: DockletError) -> ExitCode:
    """The one place errors become exit codes."""
    if isinstance(exc, CPUnreachable):
        return ExitCode.UNREACHABLE
    if isinstance(exc, APIError) and exc.code in CODE_EXITS:
        return CODE_EXITS[exc.code]
    if isinstance(exc, APIError) and 400 <= exc.status < 500:
        return ExitCode.CLIENT_ERROR
    return ExitCode.SERVER_ERROR


def error_line(exc: DockletError) -> str:
    """An error as its one line: the HTTP status first when there was an answer."""
    return exc.message if isinstance(exc, CPUnreachable) else f"{exc.status}: {exc.message}"


class DockletGroup(click.Group):
    """The group every command runs in: its DockletErrors leave by one path, exit_code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DockletError as exc:
            raise Failed(error_line(exc), exit_code(exc)) from None


def run_command(group: Callable[..., Any]) -> NoReturn:
    """Run `group` as the installed command does: every outcome leaves as an ExitCode."""
    try:
        # Without standalone mode click returns the code of a ctx.exit(code), not raising it.
        code = group(standalone_mode=False)
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


# The answer to a bootstrap (first login) and to `docklet token create`.
TOKEN: Shape = {"name": str, "scope": str, "token": str}


class Context:
    """One command's link to its control plane: the URL, a client, and where its token is from."""

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
        client.token, self.token_source = credentials.stored_token(self.cp)
        return client

    def call(self, method: str, path: str, expect: Any, body: Any = None) -> Any:
        """The answer, checked against `expect` (a Shape, or [Shape] for a list)."""
        try:
            return self.client.request(method, path, body, expect=expect)
        except APIError as exc:
            # No credential yet: a fresh cluster's first command logs in by itself.
            if exc.status != 401 or self.token_source or not self.auto_login():
                raise
            return self.client.request(method, path, body, expect=expect)

    def bootstrap(self) -> dict[str, Any]:
        """The admin token a fresh cluster gives its first login (APIError once it is closed)."""
        name = f"{self.client.user or 'admin'}-{int(time.time())}"[:64]
        return self.client.request("POST", "/api/auth/bootstrap", {"name": name}, expect=TOKEN)

    def auto_login(self) -> bool:
        """On a fresh cluster, the first command gets the admin token and keeps it."""
        try:
            answer = self.bootstrap()
        except APIError:
            return False  # the window is closed: the caller's 401 stands
        where = credentials.save(self.cp, answer["token"])
        self.client.token, self.token_source = answer["token"], "stored"
        click.echo(
            f"! First use of this cluster: logged in to {self.cp} as admin ({answer['name']});"
            f" token kept in {where}",
            err=True,
        )
        return True


pass_ctx = click.make_pass_decorator(Context)


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


# -- arguments and options --------------------------------------------------------


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
    """An app's name; <TAB> offers the CP's app names (`docklet completion`)."""
    return click.argument("name", type=TEXT, shell_complete=complete_apps)(func)


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


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


def check_timeout(timeout: float) -> None:
    if not math.isfinite(timeout):  # FloatRange lets nan through
        raise click.BadParameter("must be a number of seconds", param_hint="--timeout")


def app_path(name: str, action: str = "") -> str:
    """An app's API path; its name is one path segment, whatever it holds."""
    return f"/api/apps/{quote(name, safe='')}{action}"


# -- output -------------------------------------------------------------------------


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def quiet(line: str) -> None:
    """Where progress lines go under --json: stdout holds one JSON document."""


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(v)) for v in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        click.echo("   ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False)).rstrip())
