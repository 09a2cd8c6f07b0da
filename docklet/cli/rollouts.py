"""`docklet rollback`, `rollout status`, `rollout retry` and `history`: an app's revisions.

`docklet update` starts a rollout (apps); these look back at rollouts and
revisions, and go back to one, following the rollout as update does (monitor).
"""

from __future__ import annotations

import time
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
from docklet.cli.monitor import ROLLOUT, ROLLOUT_WAIT, TRIGGERED, changed_app
from docklet.wire.client import NULL, NUMBER, Shape

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
    check_timeout(timeout)
    target = to or _previous_stable(ctx, name)
    changed_app(
        ctx,
        name,
        app_path(name, "/rollback"),
        {"to": to} if to else {},
        said=f"↩ Rolling back {name} to {target or 'the previous stable revision'}",
        detach=detach,
        timeout=timeout,
        as_json=as_json,
    )


def _previous_stable(ctx: Context, name: str) -> str | None:
    """The revision a rollback without --to goes to, as the CP decides it: named, not sent."""
    revisions = ctx.call("GET", app_path(name, "/revisions"), [REVISION_STATUS])
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
    rollouts = ctx.call("GET", app_path(name, "/rollouts"), [ROLLOUT_DETAIL])
    latest = rollouts[0] if rollouts else None
    if as_json:
        print_json(latest)
        return
    if latest is None:
        click.echo(f"{name} has had no rollout yet")
        return
    rows = _phase_rows(latest) + _timing_rows(latest) + _failure_rows(latest)
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        click.echo(f"{label.ljust(width)}   {value}")
    _print_logs(latest["evidence"]["logs"])


Rows = list[tuple[str, str]]


def _phase_rows(r: dict[str, Any]) -> Rows:
    """Which rollout, where it is, its canary and how far it got."""
    rows = [
        ("rollout", f"{r['id']}: {r['from_revision'] or '-'} → {r['revision']}"),
        ("status", r["status"]),
    ]
    if r["canary_node"]:
        slot = f" (slot {r['canary_slot']})" if r["canary_slot"] is not None else ""
        rows.append(("canary", f"{r['canary_node']}{slot}"))
    rows.append(("progress", f"{r['done']}/{r['total']}"))
    return rows


def _timing_rows(r: dict[str, Any]) -> Rows:
    """When a finished rollout ended; the deadlines of one under way."""
    if r["terminal"]:
        if r["finished_at"] is None:
            return []
        return [("finished", f"{_duration(time.time() - r['finished_at'])} ago")]
    rows = []
    if r["deadline"] is not None:
        rows.append(("phase deadline", _until(r["deadline"])))
    rows.append(("progress deadline", _until(r["progress_deadline"])))
    return rows


def _failure_rows(r: dict[str, Any]) -> Rows:
    """Why it failed: the phase, the reason, and the evidence the agent sent."""
    evidence = r["evidence"]
    rows = []
    if r["failed_phase"]:
        rows.append(("failed in", r["failed_phase"]))
    if r["reason"]:
        rows.append(("reason", r["reason"]))
    if evidence["error"]:
        rows.append(("error", evidence["error"]))
    if evidence["exit_code"] is not None:
        rows.append(("exit code", str(evidence["exit_code"])))
    if evidence["health"]:
        rows.append(("health", evidence["health"]))
    return rows


def _print_logs(logs: str | None) -> None:
    if not logs:
        return
    lines = logs.rstrip("\n").splitlines()[-LOG_LINES:]
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
    check_timeout(timeout)
    changed_app(
        ctx,
        name,
        app_path(name, "/rollouts/retry"),
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
    revisions = ctx.call("GET", app_path(name, "/revisions"), [REVISION])
    if as_json:
        print_json(revisions)
        return
    table(
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
