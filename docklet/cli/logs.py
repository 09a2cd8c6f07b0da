"""`docklet logs`: an app's containers' lines, relayed through the control plane.

The CP asks each node's agent over its channel; the agents follow `docker logs`
and send the lines up; the CP streams them here as Server-Sent Events
(`GET /api/apps/{app}/logs`). Each line is printed as `web.2@node-b | text`, like
`docker service logs`; what the CP notices (lines dropped for a slow reader, a
container that exited, a node that did not answer) goes to stderr.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import click

from docklet.cli.base import TEXT, Context, ExitCode, app_path, cli, name_argument, pass_ctx
from docklet.common.errors import APIError, CPUnreachable
from docklet.wire.client import NULL, NUMBER, bad_answer, mismatch

LINE = {"label": str, "text": str, "time": (*NUMBER, NULL)}
READ_TIMEOUT = 30.0  # seconds without a byte (the CP says a keepalive every 2s): gone
MAX_EVENT = 1024 * 1024  # one event's line, at most (a log line is at most 16 KiB of text)


@cli.command()
@name_argument
@click.option("--follow", "-f", is_flag=True, help="Keep printing lines as they are written.")
@click.option(
    "--tail",
    "-n",
    type=click.IntRange(0, 10_000),
    default=100,
    show_default=True,
    help="Lines from the end of each container's log.",
)
@click.option("--since", type=TEXT, help="Only lines written in this last while (e.g. 10m).")
@click.option("--slot", type=click.IntRange(0, 1_000_000), help="Only this slot's container.")
@click.option("--node", type=TEXT, help="Only the containers on this node.")
@click.option(
    "--revision",
    type=TEXT,
    help="The kept containers of this revision (e.g. v3, after a rollback).",
)
@click.option("--timestamps", "-t", is_flag=True, help="Print when each line was written.")
@pass_ctx
def logs(
    ctx: Context,
    name: str,
    follow: bool,
    tail: int,
    since: str | None,
    slot: int | None,
    node: str | None,
    revision: str | None,
    timestamps: bool,
) -> None:
    """Show an app's logs: every replica's lines, each prefixed with its slot and node.

    \b
    Exit codes: 0 the lines were shown (or -f was ended with Ctrl-C: 130),
    3 the control plane did not answer or the stream was lost, 4 no such app
    (or another refusal), 7 the app (or --slot/--node/--revision) has no
    containers, 8 the node(s) running them are offline.

    Example: docklet logs web -f --tail 20
    """
    query: dict[str, Any] = {"tail": tail, "follow": int(follow), "timestamps": int(timestamps)}
    for key, value in (("since", since), ("slot", slot), ("node", node), ("revision", revision)):
        if value is not None:
            query[key] = value
    try:
        for event, data in _stream(ctx, f"{app_path(name, '/logs')}?{urlencode(query)}"):
            if event == "notice":
                click.echo(f"! {data.get('message', '')}", err=True)
            elif event == "end":
                return
            else:
                click.echo(_line(data, timestamps))
    except KeyboardInterrupt:
        raise click.exceptions.Exit(ExitCode.INTERRUPTED) from None  # quietly: the user asked


def _line(data: dict[str, Any], timestamps: bool) -> str:
    text = data["text"]
    if timestamps and data.get("time") is not None:
        when = datetime.fromtimestamp(data["time"], UTC).isoformat(timespec="milliseconds")
        text = f"{when.replace('+00:00', 'Z')} {text}"
    return f"{data['label']} | {text}"


def _stream(ctx: Context, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The answer's events, (name, data): "" for a line, "notice", "end"."""
    client = ctx.client
    url = f"{client.base_url}{path}"
    parts = urlsplit(client.base_url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname or "", parts.port, timeout=READ_TIMEOUT)
    headers = {"Accept": "text/event-stream"}
    if client.token:
        headers["Authorization"] = f"Bearer {client.token}"
    try:
        conn.request("GET", urlsplit(url)._replace(scheme="", netloc="").geturl(), headers=headers)
        answer = conn.getresponse()
        if answer.status != 200:
            raise _refused(answer)
        yield from _events(answer, url)
    except (OSError, http.client.HTTPException) as exc:
        raise CPUnreachable(f"lost the log stream from {client.base_url}: {exc}") from None
    finally:
        conn.close()
    raise CPUnreachable(f"the log stream from {client.base_url} ended without its end")


def _refused(answer: http.client.HTTPResponse) -> APIError:
    try:
        error = json.loads(answer.read(64 * 1024))["error"]
        return APIError(answer.status, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return APIError(answer.status, "http_error", f"HTTP {answer.status} {answer.reason}")


def _events(answer: http.client.HTTPResponse, url: str) -> Iterator[tuple[str, dict[str, Any]]]:
    event, data = "", ""
    for raw in iter(lambda: answer.readline(MAX_EVENT), b""):
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].removeprefix(" ")
        elif not line and data:
            yield event, _parsed(event, data, url)
            if event == "end":
                return
            event, data = "", ""


def _parsed(event: str, data: str, url: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise bad_answer(url, "an event that is not JSON") from None
    problem = mismatch(value, LINE) if not event else None
    if problem or not isinstance(value, dict):
        raise bad_answer(url, problem or "an event that is not an object")
    return value
