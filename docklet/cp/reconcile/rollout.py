"""The rollout controller: canary on one node, a health gate, promotion, automatic rollback.

A slot runs the revision its placement names (the app's stable revision when
it names none), so a rollout is a series of moves of slots between two
revisions, persisted in the `rollouts` row and in `placements`:

    pending → canary → verifying → promoting (max_parallel at a time) → stable
    (stable once the old revision's containers no longer run: their stops are queued
    as each slot's new container passes the gate)
    any failure → rolling_back → rolled_back (or rollback_failed)
    a newer revision → superseded (the next rollout starts from the stable one)

Every phase has an absolute deadline in the row, so nothing waits forever,
and a control plane that was down gets its downtime added back (`resume`).
The health gate (gate.py) judges each slot's new container; a lost node or
lease is not the revision's fault: the scheduler places the slot again, until
the progress deadline.

The controller decides: each step reads the world through a `Draft` and
records its transitions, slot moves and revision outcomes in the draft's
plan, which the scheduler's pass applies (store/rollouts.py is the only
writer of the `rollouts` table).
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from docklet.common.status import (
    ContainerState,
    DesiredState,
    NodeStatus,
    RevisionStatus,
    RolloutStatus,
    TaskKind,
    TaskStatus,
)
from docklet.common.units import parse_duration
from docklet.cp.reconcile.draft import Draft
from docklet.cp.reconcile.gate import Health, Verdict, judge
from docklet.cp.reconcile.world import Revision
from docklet.cp.store import apps, revisions, rollouts

EVIDENCE = ("error", "exit_code", "health", "logs")  # what a failed rollout keeps
Rollout = dict[str, Any]  # a rollouts row, as the draft sees it


class Controller:
    """One app's rollout, advanced by one reconcile pass: it decides, the draft records."""

    def __init__(self, draft: Draft) -> None:
        self.d = draft
        self.world = draft.world
        self.name = draft.name
        self.app = draft.app

    @property
    def current(self) -> int | None:
        return self.d.current

    # -- entry ------------------------------------------------------------------

    def advance(self) -> Rollout | None:
        """Move the app's rollout on; returns the live rollout after the move, if any."""
        self._settle_first_revision()
        live = self.d.rollout
        target = self.app["target_revision"]
        stopped = self.app["desired"] != DesiredState.RUNNING
        if live is not None and (live["revision"] != target or stopped):
            if self._verified_everywhere(live):
                self._end(live, RolloutStatus.STABLE)  # it was; only old ones were stopping
            else:
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

    def _begin(self, target: int) -> Rollout | None:
        tgt = self.d.revision(target)
        cur = self.d.revision(self.current) if self.current else None
        if self.d.status(target) != RevisionStatus.PENDING:
            return None  # failed, held or superseded: never retried in a loop
        stable = cur is not None and self.d.status(self.current) == RevisionStatus.STABLE
        if self.app["desired"] != DesiredState.RUNNING or not stable:
            # Nothing verified runs to protect: the new revision simply takes over.
            if stable and self.current is not None:
                self.d.set_status(self.current, RevisionStatus.REPLACED)
            self.d.set_current(target)
            return None
        if cur is not None and cur.container_hash == tgt.container_hash:
            # Same containers (a scale, a rollout setting): nothing new to verify.
            self.d.set_status(cur.number, RevisionStatus.REPLACED)
            self.d.set_status(target, RevisionStatus.STABLE)
            self.d.set_current(target)
            return None
        if not self.world.revision_row(self.name, target)["forced"] and self._failed_before(tgt):
            self.d.set_status(
                target,
                RevisionStatus.HELD,
                "the same container spec failed before; retry with `docklet rollout retry"
                f" {self.name}`",
            )
            return None
        return self._start(tgt)

    def _start(self, tgt: Revision) -> Rollout:
        now = self.world.now
        saved = {str(s): [p[0], p[1] or self.current] for s, p in self.d.placements.items()}
        rollout = tgt.spec.rollout
        fields = {
            "app": self.name,
            "revision": tgt.number,
            "from_revision": self.current,
            "status": RolloutStatus.PENDING,
            "saved": json.dumps(saved),
            "total": tgt.spec.replicas,
            "phase_started_at": now,
            "deadline": now + parse_duration(rollout.healthy_deadline),
            "progress_deadline": now + parse_duration(rollout.progress_deadline),
            "created_at": now,
            "updated_at": now,
        }
        return self.d.start_rollout(fields, f"started (v{self.current} → v{tgt.number})")

    def _failed_before(self, tgt: Revision) -> bool:
        runtime = self.world.history.by_runtime(self.name, tgt.spec.runtime_hash())
        statuses = self.d.statuses(runtime)
        # Failed once, and never ran verified since (a retry that worked clears it).
        ran = RevisionStatus.STABLE in statuses or RevisionStatus.REPLACED in statuses
        return RevisionStatus.FAILED in statuses and not ran

    def _known_good(self, tgt: Revision) -> bool:
        """Its containers ran verified before (a rollback by commit): no canary needed."""
        same = self.d.statuses(self.world.history.by_container(self.name, tgt.container_hash))
        return RevisionStatus.STABLE in same or RevisionStatus.REPLACED in same

    # -- one step ---------------------------------------------------------------------

    def _step(self, r: Rollout) -> Rollout:
        status = RolloutStatus(r["status"])
        if status != RolloutStatus.ROLLING_BACK and self.world.now > r["progress_deadline"]:
            if self._verified_everywhere(r):  # only old containers were still stopping
                return self._end(r, RolloutStatus.STABLE)
            limit = self.d.revision(r["revision"]).spec.rollout.progress_deadline
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

    def _place_canary(self, r: Rollout) -> Rollout:
        tgt = self.d.revision(r["revision"])
        placements = self.d.placements
        if tgt.spec.rollout.canary == 0 or self._known_good(tgt) or not placements:
            return self._transition(r, RolloutStatus.PROMOTING, done=0)
        eligible = self.world.eligible(tgt.spec)
        if not eligible:
            return r  # wait for a node, within the progress deadline
        slot = min(placements)
        holding = {p[0] for p in placements.values()}
        spare = [n for n in eligible if n not in holding]
        # A node that runs no old replica takes the canary as an extra instance,
        # so no old replica is touched until the canary is verified.
        node = min(spare, key=lambda n: (self.d.load(n), n)) if spare else placements[slot][0]
        self._move(slot, node, r["revision"])
        return self._transition(r, RolloutStatus.CANARY, canary_slot=slot, canary_node=node)

    def _watch_canary(self, r: Rollout) -> Rollout:
        tgt = self.d.revision(r["revision"])
        slot = r["canary_slot"]
        node = self.d.placements.get(slot, (None, None))[0]
        if node != r["canary_node"]:  # its node was lost: placed again, with a fresh deadline
            r = self._update(r, canary_node=node, deadline=self._deadline(tgt))
        verdict = self._judge(slot, node, tgt)
        if verdict.lost:
            return self._update(r, deadline=self._deadline(tgt))
        if verdict.state == Health.FAIL:
            return self._fail(r, verdict.reason, verdict.evidence)
        if verdict.state == Health.OK:
            self.d.verified.add(slot)
            return self._transition(r, RolloutStatus.PROMOTING, done=1)
        if verdict.running and r["status"] == RolloutStatus.CANARY:
            r = self._transition(r, RolloutStatus.VERIFYING)
        if self.world.now > r["deadline"]:
            limit = tgt.spec.rollout.healthy_deadline
            return self._fail(r, f"not healthy within the healthy deadline ({limit})", {})
        return r

    def _promote(self, r: Rollout) -> Rollout:
        tgt = self.d.revision(r["revision"])
        if self._verified_everywhere(r):
            return self._finish_when_old_gone(r, tgt)
        slots = range(1, tgt.spec.replicas + 1)
        moved = [s for s in slots if self._revision_of(s) == r["revision"]]
        verified, waiting, lost = [], [], False
        for s in moved:
            verdict = self._judge(s, self.d.placements[s][0], tgt)
            if verdict.state == Health.FAIL:
                return self._fail(r, f"slot {s}: {verdict.reason}", verdict.evidence)
            (verified if verdict.state == Health.OK else waiting).append(s)
            lost = lost or verdict.lost
        if lost:  # a slot is being placed again: its step gets a fresh deadline
            r = self._update(r, deadline=self._deadline(tgt))
        self.d.verified.update(verified)
        if waiting:
            if self.world.now > r["deadline"]:
                limit = tgt.spec.rollout.healthy_deadline
                return self._fail(r, f"slot {waiting[0]} not healthy within {limit}", {})
            return self._update(r, done=len(verified)) if r["done"] != len(verified) else r
        left = [s for s in slots if s not in moved]
        if not left:
            self._make_stable(r)
            return self._finish_when_old_gone(r, tgt)
        batch = len(left) if self._known_good(tgt) else tgt.spec.rollout.max_parallel
        for s in left[:batch]:
            node = self.d.placements[s][0] if s in self.d.placements else None
            self._move(s, node, r["revision"])
        return self._update(r, done=len(verified), deadline=self._deadline(tgt))

    def _watch_rollback(self, r: Rollout) -> Rollout:
        frm = self.d.revision(r["from_revision"])
        pending = []
        for s in range(1, frm.spec.replicas + 1):
            node = self.d.placements.get(s, (None, None))[0]
            if not self._judge(s, node, frm).running:
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

    def _old_still_running(self, tgt: Revision) -> list[str]:
        """The app's containers of other revisions that still run where they can be stopped.

        `stable` waits for them: a user of Swarm or Nomad reads "stable" as "the old
        ones are gone", and `docker ps` right after must agree. One whose stop Docker
        refused, or on a node that is not online with Docker up, is not waited for:
        the app view shows it; the rollout's verdict is about the new revision.
        """
        names = []
        for c in self.world.containers.get(self.name, []):
            if c["container_hash"] == tgt.container_hash or not ContainerState.is_live(c["state"]):
                continue
            node = self.world.nodes.get(c["node_id"])
            if node is None or node["status"] != NodeStatus.ONLINE or not node["docker_ok"]:
                continue
            last = self.world.latest.get((c["node_id"], c["name"]))
            if (
                last is not None
                and last["kind"] != TaskKind.DEPLOY
                and last["status"] == (TaskStatus.FAILED)
            ):
                continue
            names.append(c["name"])
        return names

    # -- outcomes -------------------------------------------------------------------------

    def _fail(self, r: Rollout, reason: str, evidence: dict[str, Any]) -> Rollout:
        tgt = self.d.revision(r["revision"])
        phase = r["status"]
        self.d.set_status(r["revision"], RevisionStatus.FAILED, reason)
        fields = {"reason": reason, "failed_phase": phase, "evidence": json.dumps(evidence)}
        if not tgt.spec.rollout.auto_revert:
            # Left as it is, but never broken: slots whose new container passed the
            # gate keep it; the others go back to what they ran.
            self._restore(r, keep=self.d.verified)
            return self._end(r, RolloutStatus.FAILED, **fields)
        self._restore(r)
        frm = self.d.revision(r["from_revision"])
        return self._transition(
            r, RolloutStatus.ROLLING_BACK, deadline=self._deadline(frm), **fields
        )

    def _make_stable(self, r: Rollout) -> None:
        """Every slot verified: the revision is the app's stable one, on its replicas only."""
        tgt = self.d.revision(r["revision"])
        self.d.set_status(r["from_revision"], RevisionStatus.REPLACED)
        self.d.set_status(r["revision"], RevisionStatus.STABLE)
        self.d.set_current(r["revision"])
        for slot in list(self.d.placements):
            if slot > tgt.spec.replicas:
                self.d.drop(slot)
            else:
                self._move(slot, self.d.placements[slot][0], None)

    def _verified_everywhere(self, r: Rollout) -> bool:
        """Made stable (`_make_stable`): the rollout only waits for old containers to stop."""
        return r["status"] == RolloutStatus.PROMOTING and self.current == r["revision"]

    def _finish_when_old_gone(self, r: Rollout, tgt: Revision) -> Rollout:
        """`stable` once the old revision no longer runs; its stops are queued (decide._clear)."""
        if self._old_still_running(tgt):
            return self._update(r, done=r["total"]) if r["done"] != r["total"] else r
        return self._end(r, RolloutStatus.STABLE, done=tgt.spec.replicas)

    def _end_superseded(self, r: Rollout, stopped: bool = False) -> None:
        self._restore(r)
        if stopped:  # not the revision's fault: it stays the target
            reason = "the app was stopped"
        else:
            reason = "a newer revision arrived"
            if self.d.status(r["revision"]) == RevisionStatus.PENDING:
                self.d.set_status(r["revision"], RevisionStatus.SUPERSEDED)
        self._end(r, RolloutStatus.SUPERSEDED, reason=reason)

    def _restore(self, r: Rollout, keep: set[int] | None = None) -> None:
        """Every slot back where it was, on the revision it ran (kept containers restart)."""
        saved = {int(s): p for s, p in json.loads(r["saved"]).items()}
        keep = keep or set()
        for slot in list(self.d.placements):
            if slot not in saved and slot not in keep:
                self.d.drop(slot)
        for slot, (node, rev) in saved.items():
            if slot in keep:
                continue
            self._move(slot, node, None if rev == self.current else rev)

    def _end(self, r: Rollout, status: RolloutStatus, **fields: Any) -> Rollout:
        if status in (RolloutStatus.ROLLED_BACK, RolloutStatus.ROLLBACK_FAILED):
            for slot, (node, _) in list(self.d.placements.items()):
                self._move(slot, node, None)
        return self._transition(r, status, finished_at=self.world.now, **fields)

    def _settle_first_revision(self) -> None:
        """A revision that ran without a rollout (a first one) is stable once all its slots run."""
        current = self.current
        if current is None or self.d.status(current) != RevisionStatus.PENDING:
            return
        if self.app["desired"] != DesiredState.RUNNING:
            return
        cur = self.d.revision(current)
        verdicts = [
            self._judge(s, self.d.placements.get(s, (None, None))[0], cur)
            for s in range(1, cur.spec.replicas + 1)
        ]
        if verdicts and all(v.running and v.state != Health.FAIL for v in verdicts):
            self.d.set_status(current, RevisionStatus.STABLE)

    # -- small steps ----------------------------------------------------------------------------

    def _judge(self, slot: int, node_id: str | None, rev: Revision) -> Verdict:
        verdict = judge(self.world, self.name, slot, node_id, rev)
        self.d.wake_at = min(self.d.wake_at, verdict.wake_at)  # the pass that can pass it
        return verdict

    def _revision_of(self, slot: int) -> int | None:
        placed = self.d.placements.get(slot)
        return (placed[1] or self.current) if placed else None

    def _move(self, slot: int, node: str | None, revision: int | None) -> None:
        """Point a slot at a revision (None: the app's stable one), on its node (None:
        wherever it spreads to)."""
        if node is None:
            spec_of = revision or self.current
            if spec_of is not None:
                self.d.place(slot, spec_of, revision)
        else:
            self.d.put(slot, node, revision)

    def _deadline(self, rev: Revision) -> float:
        return self.world.now + parse_duration(rev.spec.rollout.healthy_deadline)

    def _transition(self, r: Rollout, status: RolloutStatus, **fields: Any) -> Rollout:
        if status == RolloutStatus.PROMOTING:
            # Promotion needs nothing new from the agents: the controller's next pass
            # comes now, not at its interval (which added up to 2 s to every rollout).
            self.d.wake_at = min(self.d.wake_at, self.world.now)
        detail = f": {fields['reason']}" if fields.get("reason") else ""
        note = f"{r['status']} → {status}{detail}"
        return self.d.update_rollout(
            r, note, status=status, phase_started_at=self.world.now, **fields
        )

    def _update(self, r: Rollout, **fields: Any) -> Rollout:
        return self.d.update_rollout(r, **fields)


def record_digest(db: sqlite3.Connection, app: str, revision: int, digest: str) -> None:
    """Pin a revision to the image its first deploy ran, so "v2" means the same bytes later."""
    revisions.pin_digest(db, app, revision, digest)


def resume(db: sqlite3.Connection, downtime: float) -> None:
    """The control plane was down: its downtime never counts against a live rollout."""
    if downtime > 0:
        rollouts.extend_deadlines(db, downtime)


def retry(db: sqlite3.Connection, app: str) -> bool:
    """`docklet rollout retry`: the held (or failed) target may be rolled out again."""
    # A newer change to the app, as a stop and start is: a deploy Docker refused is tried again.
    apps.touch(db, app, time.time())
    return revisions.retry_target(db, app)


def unrecorded(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """Finished rollouts whose outcome is not yet written to the repository."""
    return rollouts.unrecorded(db)


def mark_recorded(db: sqlite3.Connection, rollout_id: int) -> None:
    rollouts.mark_recorded(db, rollout_id)


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
