"""The agent's workers: a bounded pool, one lane per container, and the leases it holds.

Tasks of the same container run one at a time in lease order, and a slow
stop or pull of one app never holds up another app's deploy. Every task
held, running or queued behind its container's lane, takes a worker's place
(the poller asks for no more than are free) and has its lease kept by one
renewer thread until it ends. What running and renewing a task mean (Docker
work, calls to the CP) is the agent's: the pool is given both as functions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from docklet.wire.protocol import LeasedTask

log = logging.getLogger(__name__)


@dataclass
class Held:
    """A task this agent holds a lease on: running, or queued behind its container's lane."""

    task: LeasedTask  # replaced when the CP leases the same task again (new token)
    renew_at: float  # time.monotonic() of the next lease renewal
    running: bool = False


class TaskPool:
    """`concurrency` workers over the tasks held; ends nothing itself, stops starting on `stop`.

    `run(task)` does a task and reports it; it returns False when the task was
    left for a retry (Docker down), and then the tasks queued behind it are
    given up too, so its container's tasks come back in order. `renew(task)`
    keeps a task's lease.
    """

    def __init__(
        self,
        concurrency: int,
        stop: threading.Event,
        *,
        run: Callable[[LeasedTask], bool],
        renew: Callable[[LeasedTask], None],
    ) -> None:
        self.concurrency = concurrency
        self.stop = stop
        self._run = run
        self._renew = renew
        # Guards everything below; notified whenever a task starts or ends.
        self._lock = threading.Condition()
        self._held: dict[int, Held] = {}
        self._lanes: dict[str, deque[LeasedTask]] = {}
        self._renewer: threading.Thread | None = None
        self._workers = ThreadPoolExecutor(concurrency, thread_name_prefix="task")

    def free(self) -> int:
        """Workers not spoken for: tasks held (running or queued) each take one."""
        with self._lock:
            return self.concurrency - len(self._held)

    def running(self) -> int:
        with self._lock:
            return sum(h.running for h in self._held.values())

    def wait_for_capacity(self) -> bool:
        """Block until a worker is free; False when the agent is stopping instead."""
        with self._lock:
            while len(self._held) >= self.concurrency:
                if self.stop.is_set():
                    return False
                self._lock.wait(timeout=1.0)  # `stop` is an Event: look at it now and then
        return not self.stop.is_set()

    def current(self, task: LeasedTask) -> LeasedTask:
        """The task under its newest lease (the CP may have leased it again meanwhile)."""
        with self._lock:
            held = self._held.get(task.id)
            return held.task if held else task

    def accept(self, leased: list[LeasedTask]) -> None:
        """Queue each task on its container's lane, in lease order, and keep its lease."""
        now = time.monotonic()
        with self._lock:
            for task in leased:
                if task.id in self._held:
                    # Leased again (after a re-registration): report under the new token.
                    self._held[task.id].task = task
                    continue
                self._held[task.id] = Held(task, now + task.lease_seconds / 3)
                lane = self._lanes.get(task.slot_key)
                if lane is not None:
                    lane.append(task)  # its container is busy: wait for the task ahead
                    continue
                self._lanes[task.slot_key] = deque([task])
                self._workers.submit(self._run_lane, task.slot_key)
            if self._held and self._renewer is None:
                self._renewer = threading.Thread(
                    target=self._renew_leases, daemon=True, name="lease-renewer"
                )
                self._renewer.start()
            self._lock.notify_all()

    def _run_lane(self, key: str) -> None:
        """Run one container's tasks one after another until its lane is empty."""
        while True:
            with self._lock:
                lane = self._lanes[key]
                if not lane or self.stop.is_set():
                    # Shutting down: queued tasks never start; the CP hands them out again.
                    self._drop(key)
                    return
                task = lane.popleft()
                self._held[task.id].running = True
            ended = False
            try:
                ended = self._run(task)
            except Exception:  # `run` reports its own failures; this is a last guard
                log.exception("task %s: agent error", task.id)
            finally:
                with self._lock:
                    del self._held[task.id]
                    self._lock.notify_all()
            if not ended:
                with self._lock:
                    # The task comes back after its lease runs out; the ones behind
                    # it come back with it, so this container's tasks keep their order.
                    self._drop(key)
                return

    def _drop(self, key: str) -> None:
        """Give up a lane and the tasks queued in it (caller holds the lock)."""
        for queued in self._lanes.pop(key):
            log.info("task %s: not started; it will be handed out again", queued.id)
            del self._held[queued.id]
        self._lock.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every held task has ended (when stopping: every running one).

        Returns False if some are still going after `timeout` seconds.
        """

        def idle() -> bool:
            if self.stop.is_set():
                return not any(h.running for h in self._held.values())
            return not self._held

        with self._lock:
            return self._lock.wait_for(idle, timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """End the worker threads, as ThreadPoolExecutor.shutdown does."""
        self._workers.shutdown(wait=wait, cancel_futures=cancel_futures)

    def _renew_leases(self) -> None:
        """Keep every held lease, running or queued, so none is handed out again.

        One thread for all: it sleeps until the earliest renewal is due and
        ends when nothing is held (the next accepted task starts another). Once
        the agent is stopping, queued tasks are given up: only running ones count.
        """
        while True:
            with self._lock:
                kept = self._kept()
                if not kept:
                    self._renewer = None
                    return
                now = time.monotonic()
                due = [h.task for h in kept if h.renew_at <= now]
                for task in due:
                    self._held[task.id].renew_at = now + task.lease_seconds / 3
            for task in due:
                self._renew(task)
            with self._lock:
                kept = self._kept()
                if kept:
                    earliest = min(h.renew_at for h in kept)
                    self._lock.wait(timeout=max(0.05, earliest - time.monotonic()))

    def _kept(self) -> list[Held]:
        """The leases worth keeping (caller holds the lock)."""
        if self.stop.is_set():
            return [h for h in self._held.values() if h.running]
        return list(self._held.values())
