"""The rollout controller: canary on one node, a health gate, promotion, automatic rollback.

A slot runs the revision its placement names (the app's stable revision when
it names none), so a rollout is a series of moves of slots between two
revisions, persisted in the `rollouts` row and in `placements`:

    pending → canary → verifying → promoting (max_parallel at a time) → stable
    any failure → rolling_back → rolled_back (or rollback_failed)
    a newer revision → superseded (the next rollout starts from the stable one)

Every phase has an absolute deadline in the row, so nothing waits forever,
and a control plane that was down gets its downtime added back (`resume`).
The health gate judges containers from what agents report (Docker's own
state, health, restart count and start time). A task that failed because
Docker said no fails the step; a lost node or lease is not the revision's
fault: the scheduler places the slot again, until the progress deadline.

This module is the only writer of the `rollouts` table and of revision
statuses after sync.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from docklet.common.status import (
    LIVE_ROLLOUT_STATUSES,
    ContainerState,
    DesiredState,
    EventKind,
    RevisionStatus,
    RolloutStatus,
    TaskKind,
    TaskStatus,
)
from docklet.common.units import parse_duration
from docklet.cp.store import events
from docklet.cp.store.tasks import container_name

if TYPE_CHECKING:
    from docklet.cp.reconcile.scheduler import Revision, World

log = logging.getLogger(__name__)

LIVE = f"status IN ({', '.join(repr(s) for s in LIVE_ROLLOUT_STATUSES)})"
Row = sqlite3.Row
EVIDENCE = ("error", "exit_code", "health", "logs")  # what a failed rollout keeps


@dataclass
class Verdict:
    """The health gate's word on one slot's new container."""

    state: str  # "ok", "wait" or "fail"
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    running: bool = False
    lost: bool = False  # no node, or a silent one: waiting is not the revision's fault


WAIT = Verdict("wait")
LOST = Verdict("wait", lost=True)


def judge(world: World, app: str, slot: int, node_id: str | None, rev: Revision) -> Verdict:
    """Is the slot's container of `rev` on `node_id` healthy for long enough?"""
    if node_id is None or not world.reachable(node_id):
        return LOST  # placed again by the scheduler; its deadline starts again
    name = container_name(app, slot, rev.container_hash)
    task = world.latest.get((node_id, name))
    ours = task is not None and task["kind"] == TaskKind.DEPLOY and task["revision"] == rev.number
    c = world.container(node_id, name)
    if c is None or c["state"] == ContainerState.CREATED:
        if ours and task["status"] == TaskStatus.FAILED and not task["lost"]:
            return Verdict("fail", task["error"] or "the deploy failed", {"error": task["error"]})
        return WAIT
    evidence = {
        "exit_code": c["exit_code"],
        "health": c["health_log"] or c["health"],
        "logs": c["logs"],
        "error": None,
    }
    now = world.now
    started = c["started_at"] or (task["finished_at"] if ours else None) or now
    if c["state"] in (ContainerState.EXITED, ContainerState.DEAD):
        after = max(0.0, (c["down_since"] or now) - started)
        return Verdict("fail", f"exited with code {c['exit_code']} after {after:.0f}s", evidence)
    if c["state"] == ContainerState.RESTARTING or c["restarts"]:
        n = max(1, c["restarts"] or 0)
        return Verdict("fail", f"crash loop: restarted {n} time(s)", evidence)
    if c["health"] == "unhealthy":
        detail = f": {c['health_log']}" if c["health_log"] else ""
        return Verdict("fail", f"unhealthy{detail}", evidence)
    if c["state"] != ContainerState.RUNNING or c["health"] == "starting":
        return Verdict("wait", running=c["state"] == ContainerState.RUNNING)
    healthy_at = started + parse_duration(rev.spec.rollout.min_healthy_time)
    if now < healthy_at:
        world.wake_at = min(world.wake_at, healthy_at)  # the pass that can pass it
        return Verdict("wait", running=True)
    if rev.spec.healthcheck is not None and c["health"] != "healthy":
        return Verdict("wait", running=True)
    return Verdict("ok", running=True)


class Controller:
    """One app's rollout, advanced by one reconcile pass."""

    def __init__(self, db: sqlite3.Connection, app: Row, world: World) -> None:
        self.db, self.app, self.world = db, app, world
        self.name: str = app["name"]
        self.current: int | None = app["current_revision"]
        self.placements = world.placements.setdefault(self.name, {})

    # -- entry ------------------------------------------------------------------

    def advance(self) -> Row | None:
        """Move the app's rollout on; returns the live rollout after the move, if any."""
        self._settle_first_revision()
        live = self.world.rollouts.get(self.name)
        target = self.app["target_revision"]
        stopped = self.app["desired"] != DesiredState.RUNNING
        if live is not None and (live["revision"] != target or stopped):
            self._end_superseded(live, stopped=stopped)
            live = None
        if live is None and target is not None and target != self.current:
            live = self._begin(target)
        if live is not None and not RolloutStatus(live["status"]).is_terminal:
            live = self._step(live)
        if live is None or RolloutStatus(live["status"]).is_terminal:
            return None
        return live

    # -- starting -------------------------------------------------------------------

    def _begin(self, target: int) -> Row | None:
        tgt = self.world.revision(self.name, target)
        cur = self.world.revision(self.name, self.current) if self.current else None
        status = self.world.revision_row(self.name, target)["status"]
        if status != RevisionStatus.PENDING:
            return None  # failed, held or superseded: never retried in a loop
        stable = cur is not None and self._status(self.current) == RevisionStatus.STABLE
        if self.app["desired"] != DesiredState.RUNNING or not stable:
            # Nothing verified runs to protect: the new revision simply takes over.
            if stable:
                self._set_revision(self.current, RevisionStatus.REPLACED)
            self._set_current(target)
            return None
        if cur is not None and cur.container_hash == tgt.container_hash:
            # Same containers (a scale, a rollout setting): nothing new to verify.
            self._set_revision(self.current, RevisionStatus.REPLACED)
            self._set_revision(target, RevisionStatus.STABLE)
            self._set_current(target)
            return None
        if not self.world.revision_row(self.name, target)["forced"] and self._failed_before(tgt):
            self._set_revision(
                target,
                RevisionStatus.HELD,
                "the same container spec failed before; retry with `docklet rollout retry"
                f" {self.name}`",
            )
            return None
        now = self.world.now
        saved = {str(s): [p[0], p[1] or self.current] for s, p in self.placements.items()}
        rollout = tgt.spec.rollout
        cursor = self.db.execute(
            "INSERT INTO rollouts (app, revision, from_revision, status, saved, total,"
            " phase_started_at, deadline, progress_deadline, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.name,
                target,
                self.current,
                RolloutStatus.PENDING,
                json.dumps(saved),
                tgt.spec.replicas,
                now,
                now + parse_duration(rollout.healthy_deadline),
                now + parse_duration(rollout.progress_deadline),
                now,
                now,
            ),
        )
        row = self._reload(int(cursor.lastrowid or 0))
        self._event(row, f"started (v{self.current} → v{target})")
        return row

    def _failed_before(self, tgt: Revision) -> bool:
        statuses = {
            r[0]
            for r in self.db.execute(
                "SELECT DISTINCT status FROM revisions WHERE app = ? AND runtime_hash = ?",
                (self.name, tgt.spec.runtime_hash()),
            )
        }
        # Failed once, and never ran verified since (a retry that worked clears it).
        ran = RevisionStatus.STABLE in statuses or RevisionStatus.REPLACED in statuses
        return RevisionStatus.FAILED in statuses and not ran

    def _known_good(self, tgt: Revision) -> bool:
        """Its containers ran verified before (a rollback by commit): no canary needed."""
        row = self.db.execute(
            "SELECT 1 FROM revisions WHERE app = ? AND status IN (?, ?) AND container_hash = ?"
            " LIMIT 1",
            (self.name, RevisionStatus.STABLE, RevisionStatus.REPLACED, tgt.container_hash),
        ).fetchone()
        return row is not None

    # -- one step ---------------------------------------------------------------------

    def _step(self, r: Row) -> Row:
        status = RolloutStatus(r["status"])
        now = self.world.now
        if status != RolloutStatus.ROLLING_BACK and now > r["progress_deadline"]:
            tgt = self.world.revision(self.name, r["revision"])
            limit = tgt.spec.rollout.progress_deadline
            return self._fail(r, f"no progress within the progress deadline ({limit})", {})
        if status == RolloutStatus.PENDING:
            return self._place_canary(r)
        if status in (RolloutStatus.CANARY, RolloutStatus.VERIFYING):
            return self._watch_canary(r)
        if status == RolloutStatus.PROMOTING:
            return self._promote(r)
        if status == RolloutStatus.ROLLING_BACK:
            return self._watch_rollback(r)
        return r

    def _place_canary(self, r: Row) -> Row:
        tgt = self.world.revision(self.name, r["revision"])
        if tgt.spec.rollout.canary == 0 or self._known_good(tgt) or not self.placements:
            return self._transition(r, RolloutStatus.PROMOTING, done=0)
        eligible = self.world.eligible(tgt.spec)
        if not eligible:
            return r  # wait for a node, within the progress deadline
        slot = min(self.placements)
        holding = {p[0] for p in self.placements.values()}
        spare = [n for n in eligible if n not in holding]
        # A node that runs no old replica takes the canary as an extra instance,
        # so no old replica is touched until the canary is verified.
        node = (
            min(spare, key=lambda n: (self.world.load[n], n)) if spare else self.placements[slot][0]
        )
        self._move(slot, node, r["revision"])
        return self._transition(r, RolloutStatus.CANARY, canary_slot=slot, canary_node=node)

    def _watch_canary(self, r: Row) -> Row:
        tgt = self.world.revision(self.name, r["revision"])
        slot = r["canary_slot"]
        node = self.placements.get(slot, (None, None))[0]
        if node != r["canary_node"]:  # its node was lost: placed again, with a fresh deadline
            r = self._update(r, canary_node=node, deadline=self._deadline(tgt))
        verdict = judge(self.world, self.name, slot, node, tgt)
        if verdict.lost:
            return self._update(r, deadline=self._deadline(tgt))
        if verdict.state == "fail":
            return self._fail(r, verdict.reason, verdict.evidence)
        if verdict.state == "ok":
            self.world.verified.setdefault(self.name, set()).add(slot)
            return self._transition(r, RolloutStatus.PROMOTING, done=1)
        if verdict.running and r["status"] == RolloutStatus.CANARY:
            r = self._transition(r, RolloutStatus.VERIFYING)
        if self.world.now > r["deadline"]:
            limit = tgt.spec.rollout.healthy_deadline
            return self._fail(r, f"not healthy within the healthy deadline ({limit})", {})
        return r

    def _promote(self, r: Row) -> Row:
        tgt = self.world.revision(self.name, r["revision"])
        slots = range(1, tgt.spec.replicas + 1)
        moved = [s for s in slots if self._revision_of(s) == r["revision"]]
        verified, waiting, lost = [], [], False
        for s in moved:
            verdict = judge(self.world, self.name, s, self.placements[s][0], tgt)
            if verdict.state == "fail":
                return self._fail(r, f"slot {s}: {verdict.reason}", verdict.evidence)
            (verified if verdict.state == "ok" else waiting).append(s)
            lost = lost or verdict.lost
        if lost:  # a slot is being placed again: its step gets a fresh deadline
            r = self._update(r, deadline=self._deadline(tgt))
        self.world.verified.setdefault(self.name, set()).update(verified)
        if waiting:
            if self.world.now > r["deadline"]:
                limit = tgt.spec.rollout.healthy_deadline
                return self._fail(r, f"slot {waiting[0]} not healthy within {limit}", {})
            return self._update(r, done=len(verified)) if r["done"] != len(verified) else r
        left = [s for s in slots if s not in moved]
        if not left:
            return self._finish_stable(r)
        batch = len(left) if self._known_good(tgt) else tgt.spec.rollout.max_parallel
        for s in left[:batch]:
            node = self.placements[s][0] if s in self.placements else None
            self._move(s, node, r["revision"])
        return self._update(r, done=len(verified), deadline=self._deadline(tgt))

    def _watch_rollback(self, r: Row) -> Row:
        frm = self.world.revision(self.name, r["from_revision"])
        pending = []
        for s in range(1, frm.spec.replicas + 1):
            node = self.placements.get(s, (None, None))[0]
            if not judge(self.world, self.name, s, node, frm).running:
                pending.append(s)
        if not pending:
            return self._end(r, RolloutStatus.ROLLED_BACK)
        if self.world.now > r["deadline"]:
            # The old revision keeps being healed; the alarm is this status and its event.
            return self._end(
                r,
                RolloutStatus.ROLLBACK_FAILED,
                reason=f"{r['reason']}; and v{frm.number}"
                f" did not run again in time (slots {', '.join(map(str, pending))})",
            )
        return r

    # -- outcomes -------------------------------------------------------------------------

    def _fail(self, r: Row, reason: str, evidence: dict[str, Any]) -> Row:
        tgt = self.world.revision(self.name, r["revision"])
        phase = r["status"]
        self._set_revision(r["revision"], RevisionStatus.FAILED, reason)
        fields = {"reason": reason, "failed_phase": phase, "evidence": json.dumps(evidence)}
        if not tgt.spec.rollout.auto_revert:
            # Left as it is, but never broken: slots whose new container passed the
            # gate keep it; the others go back to what they ran.
            self._restore(r, keep=self.world.verified.get(self.name, set()))
            return self._end(r, RolloutStatus.FAILED, **fields)
        self._restore(r)
        frm = self.world.revision(self.name, r["from_revision"])
        return self._transition(
            r, RolloutStatus.ROLLING_BACK, deadline=self._deadline(frm), **fields
        )

    def _finish_stable(self, r: Row) -> Row:
        tgt = self.world.revision(self.name, r["revision"])
        self._set_revision(r["from_revision"], RevisionStatus.REPLACED)
        self._set_revision(r["revision"], RevisionStatus.STABLE)
        self._set_current(r["revision"])
        for slot in list(self.placements):
            if slot > tgt.spec.replicas:
                self._drop(slot)
            else:
                self._move(slot, self.placements[slot][0], None)
        return self._end(r, RolloutStatus.STABLE, done=tgt.spec.replicas)

    def _end_superseded(self, r: Row, stopped: bool = False) -> None:
        self._restore(r)
        if stopped:  # not the revision's fault: it stays the target
            reason = "the app was stopped"
        else:
            reason = "a newer revision arrived"
            if self._status(r["revision"]) == RevisionStatus.PENDING:
                self._set_revision(r["revision"], RevisionStatus.SUPERSEDED)
        self._end(r, RolloutStatus.SUPERSEDED, reason=reason)

    def _restore(self, r: Row, keep: set[int] | None = None) -> None:
        """Every slot back where it was, on the revision it ran (kept containers restart)."""
        saved = {int(s): p for s, p in json.loads(r["saved"]).items()}
        keep = keep or set()
        for slot in list(self.placements):
            if slot not in saved and slot not in keep:
                self._drop(slot)
        for slot, (node, rev) in saved.items():
            if slot in keep:
                continue
            self._move(slot, node, None if rev == self.current else rev)

    def _end(self, r: Row, status: RolloutStatus, **fields: Any) -> Row:
        if status in (RolloutStatus.ROLLED_BACK, RolloutStatus.ROLLBACK_FAILED):
            for slot, (node, _) in list(self.placements.items()):
                self._move(slot, node, None)
        return self._transition(r, status, finished_at=self.world.now, **fields)

    def _settle_first_revision(self) -> None:
        """A revision that ran without a rollout (a first one) is stable once all its slots run."""
        if self.current is None or self._status(self.current) != RevisionStatus.PENDING:
            return
        if self.app["desired"] != DesiredState.RUNNING:
            return
        cur = self.world.revision(self.name, self.current)
        verdicts = [
            judge(self.world, self.name, s, self.placements.get(s, (None, None))[0], cur)
            for s in range(1, cur.spec.replicas + 1)
        ]
        if verdicts and all(v.running for v in verdicts):
            self._set_revision(self.current, RevisionStatus.STABLE)

    # -- small writes -------------------------------------------------------------------------

    def _revision_of(self, slot: int) -> int | None:
        placed = self.placements.get(slot)
        return (placed[1] or self.current) if placed else None

    def _move(self, slot: int, node: str | None, revision: int | None) -> None:
        """Point a slot at a revision (None: the app's stable one), on its node."""
        if node is None:
            node = self.world.place_for(self.db, self.name, slot, revision or self.current)
            if node is None:
                return
        self.placements[slot] = (node, revision)
        self.db.execute(
            "INSERT INTO placements (app, slot, node_id, revision) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (app, slot) DO UPDATE SET node_id = excluded.node_id,"
            " revision = excluded.revision",
            (self.name, slot, node, revision),
        )

    def _drop(self, slot: int) -> None:
        node = self.placements.pop(slot)[0]
        self.world.load[node] -= 1
        self.db.execute("DELETE FROM placements WHERE app = ? AND slot = ?", (self.name, slot))

    def _set_current(self, number: int) -> None:
        self.current = number
        self.db.execute("UPDATE apps SET current_revision = ? WHERE name = ?", (number, self.name))

    def _status(self, number: int | None) -> str | None:
        return self.world.revision_row(self.name, number)["status"] if number else None

    def _set_revision(self, number: int, status: RevisionStatus, reason: str | None = None) -> None:
        self.db.execute(
            "UPDATE revisions SET status = ?, reason = ? WHERE app = ? AND number = ?",
            (status, reason, self.name, number),
        )
        self.world.revision_status[(self.name, number)] = status

    def _deadline(self, rev: Revision) -> float:
        return self.world.now + parse_duration(rev.spec.rollout.healthy_deadline)

    def _transition(self, r: Row, status: RolloutStatus, **fields: Any) -> Row:
        detail = f": {fields['reason']}" if fields.get("reason") else ""
        row = self._update(r, status=status, phase_started_at=self.world.now, **fields)
        self._event(row, f"{r['status']} → {status}{detail}")
        return row

    def _update(self, r: Row, **fields: Any) -> Row:
        fields["updated_at"] = self.world.now
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE rollouts SET {sets} WHERE id = ?", (*fields.values(), r["id"]))
        return self._reload(r["id"])

    def _reload(self, rollout_id: int) -> Row:
        row = self.db.execute("SELECT * FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        self.world.rollouts[self.name] = row
        return row

    def _event(self, r: Row, what: str) -> None:
        events.record(
            self.db,
            EventKind.ROLLOUT,
            f"app {self.name}: rollout {r['id']} v{r['from_revision']}→v{r['revision']}: {what}",
            app=self.name,
        )


def record_digest(db: sqlite3.Connection, app: str, revision: int, digest: str) -> None:
    """Pin a revision to the image its first deploy ran, so "v2" means the same bytes later."""
    db.execute(
        "UPDATE revisions SET image_digest = ? WHERE app = ? AND number = ?"
        " AND image_digest IS NULL",
        (digest, app, revision),
    )


def resume(db: sqlite3.Connection, downtime: float) -> None:
    """The control plane was down: its downtime never counts against a live rollout."""
    if downtime > 0:
        db.execute(
            f"UPDATE rollouts SET deadline = deadline + ?, progress_deadline ="
            f" progress_deadline + ? WHERE {LIVE}",
            (downtime, downtime),
        )


def retry(db: sqlite3.Connection, app: str) -> bool:
    """`docklet rollout retry`: the held (or failed) target may be rolled out again."""
    # A newer change to the app, as a stop and start is: a deploy Docker refused is tried again.
    db.execute("UPDATE apps SET updated_at = ? WHERE name = ?", (time.time(), app))
    cursor = db.execute(
        "UPDATE revisions SET status = ?, reason = NULL, forced = 1 WHERE app = ? AND number ="
        " (SELECT target_revision FROM apps WHERE name = ?) AND status IN (?, ?)"
        " AND number != (SELECT COALESCE(current_revision, 0) FROM apps WHERE name = ?)",
        (RevisionStatus.PENDING, app, app, RevisionStatus.HELD, RevisionStatus.FAILED, app),
    )
    return cursor.rowcount > 0


def unrecorded(db: sqlite3.Connection) -> list[Row]:
    """Finished rollouts whose outcome is not yet written to the repository."""
    return db.execute(
        "SELECT r.*, t.commit_sha AS to_commit, f.commit_sha AS from_commit FROM rollouts r"
        " JOIN revisions t ON t.app = r.app AND t.number = r.revision"
        " JOIN revisions f ON f.app = r.app AND f.number = r.from_revision"
        f" WHERE r.recorded = 0 AND NOT r.{LIVE}"
    ).fetchall()


def mark_recorded(db: sqlite3.Connection, rollout_id: int) -> None:
    db.execute("UPDATE rollouts SET recorded = 1 WHERE id = ?", (rollout_id,))


def view(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A rollout as the API shows it."""
    if row is None:
        return None
    return {
        "id": row["id"],
        "app": row["app"],
        "revision": f"v{row['revision']}",
        "from_revision": f"v{row['from_revision']}",
        "status": row["status"],
        "terminal": RolloutStatus(row["status"]).is_terminal,
        "canary_node": row["canary_node"],
        "canary_slot": row["canary_slot"],
        "done": row["done"],
        "total": row["total"],
        "deadline": row["deadline"],
        "progress_deadline": row["progress_deadline"],
        "reason": row["reason"],
        "failed_phase": row["failed_phase"],
        "evidence": {**dict.fromkeys(EVIDENCE), **json.loads(row["evidence"] or "{}")},
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "finished_at": row["finished_at"],
    }
