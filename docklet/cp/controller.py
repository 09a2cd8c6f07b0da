"""The controller loop: sync and reconcile on each wake-up or interval; the repo watcher; and,
in upstream mode, the upstream watcher that fetches on a webhook or every --git-poll.

Most passes look only at the apps something changed (a commit, a report, a
heartbeat: `cp.changes`) and those the last pass left with work in flight;
now and then, and after a node came or went, at every app. Between passes,
heartbeat times kept in memory are written every second.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Iterable

from docklet.common.errors import DockletError
from docklet.cp.service.controlplane import ControlPlane

log = logging.getLogger(__name__)

# A pass over every app this often, whatever was reported changed: a safety net
# (most passes look only at the apps something changed, and those with work in flight).
FULL_PASS_EVERY = 30.0
GATE_SLACK = 0.05  # seconds after a health gate's wait ends that its pass comes
FLUSH_EVERY = 1.0  # heartbeats kept in memory are written this often
POLL_JITTER = 0.1  # each upstream poll comes up to this share early or late: hosts see no burst


class Controller:
    """The loop that converges the cluster, over one control plane."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self._busy: set[str] = set()  # the apps the last pass left with work in flight
        self._next_full_pass = 0.0
        self._gate_at = math.inf  # when the soonest health gate's wait ends (time.time())

    def wake(self, apps: Iterable[str] | None = None) -> None:
        """A pass now, over these apps (all of them if None)."""
        self.cp.changes.wake(apps)

    def pass_once(self) -> None:
        """Look at the apps something changed, and those with work in flight; now and
        then (and after a node came or went), at every app."""
        changed = self.cp.changes.take()
        now = time.monotonic()
        apps: set[str] | None = None
        if changed is None or now >= self._next_full_pass:
            self._next_full_pass = now + FULL_PASS_EVERY
        else:
            apps = changed | self._busy
        try:
            done = self.cp.passes.run(apps)
        except Exception:
            self.cp.changes.missed()  # what this pass missed, the next one looks at
            raise
        self._busy = done.busy
        self._gate_at = done.wake_at
        log.debug(
            "pass: %d app(s) looked at (%s), %d queued, %d busy",
            done.looked_at,
            "all" if apps is None else "changed or busy",
            done.queued,
            len(done.busy),
        )

    def run(self, stop: threading.Event, max_iterations: int | None = None) -> None:
        """Sync and reconcile until `stop` is set: on every wake, or every interval.

        Each stage is isolated: a sync that fails (a broken repository) still
        lets the reconcile pass expire leases and schedule, and the reverse.
        """
        if self.cp.upstream is not None:
            threading.Thread(
                target=self.watch_upstream, args=(stop,), daemon=True, name="watch_upstream"
            ).start()
        done = 0
        next_pass = 0.0
        while not stop.is_set() and (max_iterations is None or done < max_iterations):
            self._flush()
            if time.monotonic() >= next_pass:
                self._stages()
                done += 1
                # The next pass at the interval, or when a health gate's wait ends.
                gate = max(0.0, self._gate_at - time.time()) + GATE_SLACK
                next_pass = time.monotonic() + min(self.cp.config.reconcile_interval, gate)
                if max_iterations is not None and done >= max_iterations:
                    break
            left = next_pass - time.monotonic()
            if self.cp.changes.wait(max(0.0, min(left, FLUSH_EVERY))):
                next_pass = 0.0  # woken: a pass now

    def _flush(self) -> None:
        try:
            self.cp.liveness.flush_seen()
        except Exception:  # kept in memory, and tried again in a second
            log.exception("controller: writing heartbeat times failed")

    def _stages(self) -> None:
        for stage in (self.cp.passes.sync, self.pass_once):
            try:
                stage()
            except Exception:
                log.exception(
                    "controller: %s failed; retrying in %.1fs",
                    stage.__name__,
                    self.cp.config.reconcile_interval,
                )

    def watch_repo(self, stop: threading.Event) -> None:
        """Wake the controller when a `git push` moves a ref in the bare repository."""
        from watchfiles import watch

        repo = self.cp.config.repo_path

        def is_ref(_change: object, path: str) -> bool:
            # Branches only: the notes and deployed refs Docklet writes must not wake it.
            relative = path[len(str(repo)) + 1 :]
            return relative.startswith("refs/heads/") or relative == "packed-refs"

        try:
            for _ in watch(
                repo, watch_filter=is_ref, stop_event=stop, raise_interrupt=False, debounce=200
            ):
                self.wake(())  # the pass's sync says which apps the push changed
        except Exception:  # the interval pass still syncs; this only makes it prompt
            log.exception(
                "repo watcher stopped; new pushes sync within %.0fs",
                self.cp.config.reconcile_interval,
            )

    def watch_upstream(self, stop: threading.Event, max_iterations: int | None = None) -> None:
        """Upstream mode: fetch (and sync) at once, then on each webhook and every --git-poll
        seconds, jittered. Its own thread: a slow or unreachable Git host never delays a
        reconcile pass, and a fetch that fails is logged and tried again at the next poll."""
        upstream = self.cp.upstream
        if upstream is None:
            return
        done = 0
        while not stop.is_set() and (max_iterations is None or done < max_iterations):
            try:
                self.cp.passes.follow()
            except DockletError as exc:
                log.warning("upstream: %s; next try in %.0fs", exc.message, self.cp.config.git_poll)
            except Exception:
                log.exception("upstream: fetching failed")
            done += 1
            if max_iterations is not None and done >= max_iterations:
                break
            jitter = random.uniform(1 - POLL_JITTER, 1 + POLL_JITTER)
            upstream.wait(self.cp.config.git_poll * jitter, stop)
