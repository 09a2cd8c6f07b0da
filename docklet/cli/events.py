"""`docklet events`: the control plane's event log, listed or followed as it happens.

Following reads `GET /api/events` as Server-Sent Events. A stream ends after a
while (the CP bounds it) or when the connection drops; the command reconnects
with `Last-Event-ID`, the id of the last event it printed, so it prints each
event once and misses none the CP still keeps.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import click

from docklet.cli.base import TEXT, Context, cli, json_option, pass_ctx
from docklet.cli.completion import complete_apps
from docklet.common.errors import APIError, CPUnreachable
from docklet.wire.client import NULL, NUMBER, bad_answer, mismatch

EVENT = {"id": int, "at": NUMBER, "kind": str, "app": (str, NULL), "message": str}
PAGE = 1000  # events one list call asks for; --since pages on with the last id
READ_TIMEOUT = 60.0  # seconds without a byte (the CP says a keepalive every 15s): reconnect
GIVE_UP = 60.0  # seconds of failed reconnects before `-f` exits
BACKOFF_MAX = 10.0


@cli.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing events as they happen.")
@click.option("--app", type=TEXT, shell_complete=complete_apps, help="Only this app's events.")
@click.option(
    "--since",
    type=TEXT,
    help="Events after this event id (e.g. 1234), or in this last while (e.g. 10m, 1h30m).",
)
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(1, 1000),
    default=50,
    show_default=True,
    help="Newest events shown (without --since).",
)
@json_option
@pass_ctx
def events(
    ctx: Context, follow: bool, app: str | None, since: str | None, limit: int, as_json: bool
) -> None:
    """Show what happened: deploys, rollouts, tasks, nodes; -f follows them as they happen.

    --json prints one JSON object a line.

    Example: docklet events -f --app web
    """
    show = _printer(as_json)
    last: int | None = None
    if since is None or not follow:
        for event in _listed(ctx, app, since, limit):
            show(event)
            last = event["id"]
    if follow:
        # Without --since, what was listed is the context; the stream starts after it
        # (after id 0 when the list was empty: whatever came in between is shown).
        resume = last if last is not None else (None if since else 0)
        for event in Follower(ctx, app, since, resume).events():
            show(event)


def _listed(ctx: Context, app: str | None, since: str | None, limit: int) -> Iterator[dict]:
    """The newest `limit` events; with `since`, every event after it, page by page."""
    query: dict[str, Any] = {"app": app} if app else {}
    if since is None:
        yield from ctx.call("GET", f"/api/events?{urlencode({**query, 'limit': limit})}", [EVENT])
        return
    while True:
        page = ctx.call(
            "GET", f"/api/events?{urlencode({**query, 'since': since, 'limit': PAGE})}", [EVENT]
        )
        yield from page
        if len(page) < PAGE:
            return
        since = str(page[-1]["id"])


def _printer(as_json: bool) -> Any:
    def show(event: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(event))
            return
        when = datetime.fromtimestamp(event["at"]).strftime("%Y-%m-%d %H:%M:%S")
        subject = event["app"] or event.get("node_id") or "-"
        message = " ".join(event["message"].split())  # one line, whatever it quotes
        click.echo(f"{when}  {event['id']:>6}  {event['kind']:<17} {subject:<20} {message}")

    return show


class Follower:
    """The event stream, reconnected with Last-Event-ID whenever it ends or drops."""

    def __init__(self, ctx: Context, app: str | None, since: str | None, last: int | None) -> None:
        self.ctx, self.app, self.since, self.last = ctx, app, since, last

    def events(self) -> Iterator[dict[str, Any]]:
        failing_since: float | None = None
        backoff = 0.5
        while True:
            try:
                for event in self._stream():
                    failing_since, backoff = None, 0.5
                    self.last = event["id"]
                    yield event
                failing_since, backoff = None, 0.5  # it ended as streams do: at once again
            except (CPUnreachable, APIError) as exc:
                if isinstance(exc, APIError) and (exc.status < 500 or exc.code == "bad_response"):
                    raise  # refused, or not an event stream: reconnecting will not help
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > GIVE_UP:
                    raise
                click.echo(f"! {exc.message}; reconnecting in {backoff:g}s", err=True)
                time.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _stream(self) -> Iterator[dict[str, Any]]:
        client = self.ctx.client
        query = {k: v for k, v in (("app", self.app), ("since", self.since)) if v}
        headers = {"Accept": "text/event-stream"}
        if self.last is not None:
            headers["Last-Event-ID"] = str(self.last)
        if client.token:
            headers["Authorization"] = f"Bearer {client.token}"
        url = f"{client.base_url}/api/events?{urlencode(query)}"
        conn = _connection(client.base_url)
        try:
            conn.request(
                "GET", urlsplit(url)._replace(scheme="", netloc="").geturl(), headers=headers
            )
            answer = conn.getresponse()
            if answer.status != 200:
                raise _refused(answer)
            yield from _parse(answer, url)
        except (OSError, http.client.HTTPException) as exc:
            raise CPUnreachable(f"lost the event stream from {client.base_url}: {exc}") from None
        finally:
            conn.close()


def _connection(base_url: str) -> http.client.HTTPConnection:
    parts = urlsplit(base_url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return kind(parts.hostname or "", parts.port, timeout=READ_TIMEOUT)


def _refused(answer: http.client.HTTPResponse) -> APIError:
    try:
        error = json.loads(answer.read(64 * 1024))["error"]
        return APIError(answer.status, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return APIError(answer.status, "http_error", f"HTTP {answer.status} {answer.reason}")


def _parse(answer: http.client.HTTPResponse, url: str) -> Iterator[dict[str, Any]]:
    """The events of a Server-Sent Events answer (comment lines are keepalives)."""
    data: list[str] = []
    for raw in iter(lambda: answer.readline(1024 * 1024), b""):
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            try:
                event = json.loads("\n".join(data))
            except ValueError:
                raise bad_answer(url, "an event that is not JSON") from None
            problem = mismatch(event, EVENT)
            if problem:
                raise bad_answer(url, problem)
            data = []
            yield event
