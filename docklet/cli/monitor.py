"""Following a change to its outcome: an app until it runs, a rollout until its verdict.

Shared by `run` and `update` (apps) and by `rollback` and `rollout retry` (rollouts),
as Nomad's command/monitor.go follows an evaluation for every command that starts one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import click

from docklet.cli.base import Context, ExitCode, Failed, app_path, print_json, quiet
from docklet.common.errors import CPUnreachable
from docklet.wire.client import NULL, Shape, bad_answer

ROLLOUT_WAIT = 600.0  # how long a command follows a rollout; the CP fails a stalled one itself
POLL_INTERVAL = 0.3  # seconds between two reads of a rollout being followed

# An app as waiting for it to run reads it (GET /api/apps/NAME).
APP: Shape = {
    "desired": str,
    "replicas": int,
    "actual": str,
    "running": int,
    "nodes": [str],
    "errors": [{"node_id": str, "error": (str, NULL)}],
    "last_error": (str, NULL),
}
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


def wait_running(
    ctx: Context, name: str, timeout: float, say: Callable[[str], None] = click.echo
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        app = ctx.call("GET", app_path(name), APP)
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


def changed_app(
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
    if _ends_at_once(app, name, as_json, follow_unchanged):
        return
    say = quiet if as_json else click.echo
    say(said)
    latest = first = app["rollout"]
    if detach:
        if as_json:
            print_json(app)
        return
    try:
        if first is None:  # no rollout (a stopped app, a first revision): wait as run does
            wait_running(ctx, name, timeout, say)
            return
        said_already: set[Hashable] = set()
        for latest in _rollout_states(ctx, name, first, timeout):
            _say_new(_progress(latest), said_already, say)
    finally:
        if as_json:  # the answer, with the rollout as last seen
            print_json({**app, "rollout": latest})
    _verdict(name, latest, timeout, say)


def _ends_at_once(app: dict[str, Any], name: str, as_json: bool, follow_unchanged: bool) -> bool:
    """Whether the answer leaves nothing to follow: a held spec or an unchanged one whose
    revision failed (Failed), an unchanged one."""
    # A retry commits nothing either: it starts the failed revision's rollout again.
    failed = None if app["commit"] is not None or follow_unchanged else _failed_target(app, name)
    if app["held"] or failed:
        if as_json:
            print_json(app)
        raise Failed(app["held"] or failed)
    if app["commit"] is not None or follow_unchanged:
        return False
    if as_json:
        print_json(app)
    else:
        click.echo(f"✔ {name} is unchanged ({app['revision'] or 'no revision'})")
    return True


def _failed_target(app: dict[str, Any], name: str) -> str | None:
    """What to say when the spec asked for is the one whose rollout failed (None if not).

    Asking again commits nothing, and nothing runs it: a ✔ would say all is well.
    (The revisions are read with .get: a CP that does not name them says nothing.)
    """
    target, running, r = app.get("target_revision"), app.get("running_revision"), app["rollout"]
    if target is None or target == running or r is None:
        return None
    if r["revision"] != target or r["status"] not in FAILING or not r["terminal"]:
        return None
    runs = f"{running} runs" if running else "nothing runs"
    return (
        f"{name} {target} is unchanged and its rollout {r['status']}:"
        f" {r['reason'] or 'no reason given'}; {runs}."
        f" Try it again with: docklet rollout retry {name}"
    )


def _say_new(
    lines: list[tuple[Hashable, str]], said_already: set[Hashable], say: Callable[[str], None]
) -> None:
    """Each line once: a rollout read again in the same phase says nothing new."""
    for key, line in lines:
        if key not in said_already:
            said_already.add(key)
            say(line)


def _rollout_states(
    ctx: Context, name: str, first: dict[str, Any], timeout: float
) -> Iterator[dict[str, Any]]:
    """The rollout as it changes, until it is terminal or `timeout` has passed.

    The rollout goes on in the CP whatever this CLI sees: a CP that does not
    answer for a while (it restarts) is asked again until the deadline.
    """
    path = app_path(name, f"/rollouts/{first['id']}")
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
    if status == "promoting" and r["done"] == r["total"]:
        # Verified everywhere; `stable` waits for the old containers to be gone.
        line = f"… {revision} runs on every replica; stopping the previous revision"
        return [("stopping", line)]
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
