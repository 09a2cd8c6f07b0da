"""GET /metrics: what the control plane does and holds, in Prometheus' text format.

One `CollectorRegistry` per `ControlPlane` (a process may hold several: the
tests do), never prometheus_client's global one. Three kinds of figures:

- measured as they happen: API requests (by the route table's pattern, never
  the raw path, so label values stay bounded), auth failures, write
  transactions (the store's observer), sync and reconcile passes and a
  push's way to its revisions (the passes' observer);
- counted at scrape time from the database, by id: rollouts and tasks created
  since the last scrape, and those the last one saw open, re-read (`Tail`);
  a scrape reads what happened since the one before, never a whole table;
- read at scrape time from what the CP keeps anyway (`_Now`): nodes and apps
  by status (the cached `ps` list), long-poll slots, the server's 503s.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from docklet import __version__
from docklet.common import defaults
from docklet.common.status import ActualState, AppStatus, NodeStatus, RolloutStatus, TaskStatus
from docklet.cp.desired.sync import SyncResult
from docklet.cp.service.liveness import Liveness
from docklet.cp.service.polls import Polls
from docklet.cp.service.views import Views, node_statuses
from docklet.cp.settings import CPConfig
from docklet.cp.store import metrics as stored
from docklet.cp.store.db import Store

TAIL_NEW = 20_000  # rows one scrape takes in per table; the rest wait for the next one
TAIL_OPEN = 50_000  # open rows followed per table at most; the oldest are let go beyond
TAIL_CHUNK = 500  # ids re-read per query
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
UNMATCHED = "unmatched"  # the route label of a request no route matched (404, 405)

FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SLOW = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
FINISHED_TASKS = (TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED)

Row = dict[str, Any]


class Measured:
    """A WSGI app whose each answer is counted and timed, by the route pattern Bottle
    leaves in the environ, never the raw path (a label value per app name would grow
    without bound); timed until the answer starts, so a stream's length is not taken
    for its latency. `app` is the app itself (its Bottle, for what it keeps)."""

    def __init__(self, app: WSGIApp, count: Callable[[str, str, int, float], None]) -> None:
        self.app, self.count = app, count

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        began, seen = time.perf_counter(), False

        def started(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            nonlocal seen
            if not seen:  # a second call (an error once started) is the same answer
                seen = True
                route = environ.get("bottle.route")
                self.count(
                    route.rule if route is not None else UNMATCHED,
                    environ.get("REQUEST_METHOD", ""),
                    int(status[:3]),
                    time.perf_counter() - began,
                )
            return start_response(status, headers, *exc_info)

        return self.app(environ, started)


class Tail:
    """A table followed by id: the rows created since the last look, and those still
    open at the last look, read again (by primary key both)."""

    def __init__(
        self,
        after: int,
        read_after: Callable[[int, int], list[Row]],
        read_by_id: Callable[[Sequence[int]], list[Row]],
    ) -> None:
        self.after, self.read_after, self.read_by_id = after, read_after, read_by_id
        self.open: dict[int, None] = {}  # ids, oldest first

    def changes(self) -> tuple[list[Row], list[Row]]:
        """(rows new since the last look, open rows as they are now)."""
        new = self.read_after(self.after, TAIL_NEW)
        ids = list(self.open)
        again: list[Row] = []
        for start in range(0, len(ids), TAIL_CHUNK):
            again += self.read_by_id(ids[start : start + TAIL_CHUNK])
        # Moved on only once every read succeeded: a failed scrape loses nothing.
        if new:
            self.after = new[-1]["id"]
        self.open = {}  # gone rows (an app forgotten) are let go; open ones come back
        return new, again

    def still_open(self, row_id: int) -> None:
        self.open[row_id] = None
        if len(self.open) > TAIL_OPEN:
            del self.open[next(iter(self.open))]


class Metrics:
    """This control plane's registry and what feeds it."""

    def __init__(
        self, store: Store, config: CPConfig, views: Views, polls: Polls, liveness: Liveness
    ) -> None:
        self.store, self.config = store, config
        self.views, self.polls, self.liveness = views, polls, liveness
        # No `_created` series beside each counter: half the answer, and no dashboard
        # here reads them (the process's start is docklet_info's).
        disable_created_metrics()
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()  # one scrape's tally at a time
        # Gauges other services own, read at scrape time: name → (help, read).
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self._measured(self.registry)
        self._counted(self.registry)
        self.registry.register(_Now(self))
        newest_rollout, newest_task = stored.newest_ids(store)
        self._rollouts = Tail(
            newest_rollout,
            functools.partial(stored.rollouts_after, store),
            functools.partial(stored.rollouts_by_id, store),
        )
        self._tasks = Tail(
            newest_task,
            functools.partial(stored.tasks_after, store),
            functools.partial(stored.tasks_by_id, store),
        )
        store.observers.append(self.wrote)

    def _measured(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "docklet_api_requests",
            "API requests answered, by route pattern, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "docklet_api_request_seconds",
            "Time to answer an API request (a stream: until its answer starts).",
            ["route", "method"],
            buckets=FAST,
            registry=registry,
        )
        self.auth_failures = Counter(
            "docklet_auth_failures",
            "Credentials refused (API and Git), by answer: 401, or 429 past the address's limit.",
            ["answer"],
            registry=registry,
        )
        self.write_seconds = Histogram(
            "docklet_write_transaction_seconds",
            "Database write transactions: what every other write waits on.",
            buckets=FAST,
            registry=registry,
        )
        self.pass_seconds = Histogram(
            "docklet_pass_seconds",
            "Sync (Git to the database) and reconcile (the database to tasks) passes.",
            ["stage"],
            buckets=FAST,
            registry=registry,
        )
        self.push_seconds = Histogram(
            "docklet_push_to_revision_seconds",
            "From the branch moving (a git push, or an API change's commit) to its revisions.",
            buckets=SLOW,
            registry=registry,
        )

    def _counted(self, registry: CollectorRegistry) -> None:
        self.rollouts_started = Counter(
            "docklet_rollouts_started", "Rollouts started.", registry=registry
        )
        self.rollouts_finished = Counter(
            "docklet_rollouts_finished",
            "Rollouts ended, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.rollout_seconds = Histogram(
            "docklet_rollout_duration_seconds",
            "From a rollout's start to its end, by outcome.",
            ["outcome"],
            buckets=SLOW,
            registry=registry,
        )
        self.tasks_created = Counter(
            "docklet_tasks_created",
            "Tasks queued for agents, by kind.",
            ["kind"],
            registry=registry,
        )
        self.tasks_finished = Counter(
            "docklet_tasks_finished",
            "Tasks ended, by kind and outcome (done, failed, cancelled).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.task_seconds = Histogram(
            "docklet_task_latency_seconds",
            "From a task's creation to its end, by kind and outcome.",
            ["kind", "outcome"],
            buckets=SLOW,
            registry=registry,
        )

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time from the service that owns the figure."""
        self.gauges[name] = (doc, read)

    # -- fed as it happens ------------------------------------------------------------

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """An API request answered; `route` is its ROUTES pattern (or UNMATCHED)."""
        method = method if method in METHODS else "other"
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route, method).observe(seconds)

    def measured(self, app: WSGIApp) -> Measured:
        """`app` (the API's or the dashboard's) with each answer counted and timed."""
        return Measured(app, self.request)

    def auth_failed(self, limited: bool) -> None:
        self.auth_failures.labels("429" if limited else "401").inc()

    def wrote(self, site: str, seconds: float) -> None:
        self.write_seconds.observe(seconds)

    def passed(self, stage: str, seconds: float, result: object) -> None:
        self.pass_seconds.labels(stage).observe(seconds)
        if isinstance(result, SyncResult) and result.new_revisions:
            moved = self._branch_moved_at()
            if moved is not None:
                self.push_seconds.observe(max(0.0, time.time() - moved))

    def _branch_moved_at(self) -> float | None:
        """When the branch's ref last moved: its loose ref file's time (Git writes one
        on every update; a packed ref alone says nothing of when)."""
        ref = self.config.repo_path / "refs" / "heads" / defaults.GIT_BRANCH
        try:
            return ref.stat().st_mtime
        except OSError:
            return None

    # -- counted at scrape time -------------------------------------------------------

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The scrape's answer, in the format `accept` asks for (text, or OpenMetrics)."""
        with self._lock:
            self._tally()
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def _tally(self) -> None:
        new, again = self._rollouts.changes()
        self.rollouts_started.inc(len(new))
        for r in new + again:
            if RolloutStatus(r["status"]).is_terminal:
                self.rollouts_finished.labels(r["status"]).inc()
                self.rollout_seconds.labels(r["status"]).observe(_took(r))
            else:
                self._rollouts.still_open(r["id"])
        new, again = self._tasks.changes()
        for t in new:
            self.tasks_created.labels(t["kind"]).inc()
        for t in new + again:
            if t["status"] in FINISHED_TASKS:
                self.tasks_finished.labels(t["kind"], t["status"]).inc()
                self.task_seconds.labels(t["kind"], t["status"]).observe(_took(t))
            else:
                self._tasks.still_open(t["id"])


def _took(row: Row) -> float:
    return max(0.0, (row["finished_at"] or time.time()) - row["created_at"])


class _Now(Collector):
    """Gauges read at scrape time from what the CP keeps anyway."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        deaf, seen = m.liveness.deaf_until(), m.liveness.last_seen()
        nodes = node_statuses(m.store, m.config, deaf, seen).values()  # the nodes table: small
        yield _by("docklet_nodes", "Nodes by status.", "status", NodeStatus, nodes)
        # The `ps` list, kept while nothing it was made from changed (Views.apps).
        apps = m.views.apps(brief=True)
        statuses = (a["status"] for a in apps)
        yield _by("docklet_apps", "Apps by status.", "status", AppStatus, statuses)
        actual = (a["actual"] for a in apps)
        yield _by("docklet_apps_actual", "Apps by what runs of them.", "state", ActualState, actual)
        desired = sum(a["replicas"] or 0 for a in apps)
        yield _gauge("docklet_replicas_desired", "Replicas the apps ask for.", desired)
        running = sum(a["running"] or 0 for a in apps)
        yield _gauge("docklet_replicas_running", "Replicas running as they should.", running)
        waiting = m.polls.waiting()
        yield _gauge(
            "docklet_long_polls_waiting", "Task long-polls waiting (slots in use).", waiting
        )
        slots = m.config.long_poll_slots
        yield _gauge("docklet_long_poll_slots", "Task long-polls that may wait at once.", slots)
        overload = m.liveness.overload
        yield CounterMetricFamily(
            "docklet_overloaded",
            "Requests answered 503 because requests waited too long for a thread.",
            value=overload.refused if overload is not None else 0,
        )
        for name, (doc, read) in list(m.gauges.items()):
            yield _gauge(name, doc, read())
        info = GaugeMetricFamily(
            "docklet_info", "This control plane's version.", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info


def _by(name: str, doc: str, label: str, values: Any, found: Iterable[str]) -> GaugeMetricFamily:
    """A gauge with one series per value of the enum `values` (0 when none): a dashboard's
    series never vanish."""
    family = GaugeMetricFamily(name, doc, labels=[label])
    counts = {str(v): 0 for v in values}
    for value in found:
        counts[value] = counts.get(value, 0) + 1
    for value, count in counts.items():
        family.add_metric([value], count)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)
