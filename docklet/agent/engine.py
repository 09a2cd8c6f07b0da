"""The agent's side of Docker: run tasks and list containers through the Engine API.

Every container Docklet makes carries `docklet.*` labels and the name the CP
gave it (the slot and its spec's hash), so a task run twice, or after an agent
restart, finds the container it made before instead of making a second one,
and a rollback finds the old revision's container kept, stopped, to start again.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

import docker
import docker.errors
import docker.utils

from docklet.agent.container import create_options, task_labels
from docklet.common import defaults
from docklet.common.errors import DockerUnavailable, TaskFailed
from docklet.common.status import ContainerState
from docklet.wire.protocol import MAX_EVIDENCE, ContainerSpec, Label, LeasedTask

log = logging.getLogger(__name__)

DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"  # what the SDK uses without DOCKER_HOST
_EXIT = re.compile(r"(?:Exited|Restarting) \((-?\d+)\)")
_HEALTH = re.compile(r"\((healthy|unhealthy|health: starting)\)")
# Docker's RFC 3339 times carry nanoseconds; datetime takes at most microseconds.
_NANOS = re.compile(r"(\.\d{6})\d+")
YOUNG = 15 * 60  # seconds since creation during which a rollout may still be judging it
MAX_INSPECTS = 50  # per heartbeat: the rest wait for the next one
# Seconds of inspecting per heartbeat, after which the rest wait for the next one: Docker
# answers an inspect only once a container it is starting or stopping is done, and a
# heartbeat stuck behind a burst of those leaves its node silent (found at 50 rollouts).
INSPECT_BUDGET = 2.0
# Docker's own words for how long a container has been up (go-units' HumanDuration).
_UP = re.compile(
    r"Up (Less than a second|(\d+) seconds?|About a minute|(\d+) minutes|About an hour"
    r"|(\d+) hours)"
)
UP_SLACK = 2.0  # seconds of rounding and clock steps allowed when matching an uptime
# An inspect of a running container is trusted for this share of how long it had been
# up when read: a restart its uptime in words cannot show (one within UP_SLACK) is seen
# by a later inspect, and a health gate's window is always covered by one taken after it
# ends, however its samples fall; a steady container costs a few inspects while young.
TRUSTED_SHARE = 0.5
MAX_EVENTS = 1000  # of one container's start and die events read to explain its last exit
LOG_LINES = 20  # of an exited, restarting or unhealthy container, as evidence
MAX_PARTIAL = 64 * 1024  # bytes of a line without its end held before passing it on

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Outcome:
    """What a task left in Docker: the container as observed; for a deploy, the image it runs."""

    container: dict[str, Any]
    image_digest: str | None = None


def _docker_errors(
    func: Callable[Concatenate[Engine, P], R],
) -> Callable[Concatenate[Engine, P], R]:
    """Docker down → DockerUnavailable (retry later); Docker said no → TaskFailed.

    The one boundary between the SDK and Docklet. The SDK's transport errors
    (requests' exceptions, which are OSErrors) read like a traceback, so the
    message says where the engine was expected and the raw text is kept aside
    for the agent's log.
    """

    @functools.wraps(func)
    def wrapper(engine: Engine, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(engine, *args, **kwargs)
        except docker.errors.APIError as exc:
            raise TaskFailed(_explain(exc)) from None
        except (OSError, docker.errors.DockerException) as exc:
            raise engine.unavailable(exc) from None

    return wrapper


def _explain(exc: docker.errors.APIError) -> str:
    text = exc.explanation or str(exc)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return str(text).strip()


class Engine:
    """One Docker engine, reached through the docker SDK (API version negotiated).

    `url` is where the engine is expected (DOCKER_HOST, else the default
    socket): it names the engine in messages people read. The SDK client is
    made on first use, so an agent starts even while Docker is down.
    """

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        *,
        url: str | None = None,
        timeout: float = defaults.DOCKER_TIMEOUT,
        max_pool_size: int = defaults.AGENT_CONCURRENCY + 4,
    ) -> None:
        self._client = client
        self._explicit_url = url
        self.url = url or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL
        self.timeout = timeout
        self.max_pool_size = max_pool_size
        # Inspect evidence by container id, with the list `Status` it was read under.
        # Only the heartbeat loop (one thread) lists containers.
        self._evidence: dict[str, tuple[str, dict[str, Any]]] = {}
        self._logs_api: docker.APIClient | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = self._connect()
            except (OSError, docker.errors.DockerException) as exc:
                raise self.unavailable(exc) from None
        return self._client

    def _connect(self) -> docker.DockerClient:
        # One pooled connection per task running at once, or calls queue for one.
        options: dict[str, Any] = {
            "version": "auto",
            "timeout": self.timeout,
            "max_pool_size": self.max_pool_size,
        }
        if self._explicit_url:
            return docker.DockerClient(base_url=self._explicit_url, **options)
        return docker.from_env(**options)  # DOCKER_HOST, DOCKER_TLS_VERIFY, ...

    def unavailable(self, exc: BaseException) -> DockerUnavailable:
        """What to tell a person when the engine does not answer; the SDK's text is a detail."""
        # requests' Timeout classes cannot be named without importing requests.
        if "Timeout" in type(exc).__name__:
            message = f"Docker engine at {self.url} did not answer within {self.timeout:g}s"
        else:
            message = f"Docker engine not answering at {self.url}"
        return DockerUnavailable(message, detail=f"{type(exc).__name__}: {exc}")

    @_docker_errors
    def ping(self) -> None:
        self.client.ping()

    @_docker_errors
    def info(self) -> dict[str, Any]:
        info = self.client.info()
        return {
            "engine_id": info["ID"],
            "hostname": info["Name"],
            "docker_version": info.get("ServerVersion"),
            "api_version": self.client.api.api_version,
        }

    @_docker_errors
    def list_managed(self, cluster_id: str) -> list[dict[str, Any]]:
        """Every container of this cluster, running or not; raises if Docker is down."""
        rows = self.client.api.containers(
            all=True, filters={"label": f"{Label.CLUSTER}={cluster_id}"}
        )
        return self.observe(rows, time.time())

    def observe(self, rows: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        """List rows as the CP records them, with inspect evidence where a rollout needs it.

        A list row has no start time or restart count. Young containers (what a
        health gate judges) and ones not running (what a failed canary leaves)
        are inspected; old running ones are not, so a steady node costs one
        list call per heartbeat. What was inspected is kept while it is still
        true (`_still_true`: same state and health, and an uptime that says it
        has not restarted since), and at most MAX_INSPECTS run per call, for at
        most INSPECT_BUDGET seconds.
        """
        wanted = sorted(
            (r for r in rows if _worth_inspecting(r, now)),
            key=lambda r: r.get("Created") or 0,
            reverse=True,  # the newest first: a rollout is waiting on those
        )
        evidence: dict[str, tuple[str, dict[str, Any]]] = {}
        inspected, budget = 0, time.monotonic() + INSPECT_BUDGET
        for row in wanted:
            status = row.get("Status", "")
            cached = self._evidence.get(row["Id"])
            if cached is not None and _still_true(cached, row, now):
                evidence[row["Id"]] = cached
                continue
            if inspected >= MAX_INSPECTS or time.monotonic() > budget:
                continue
            inspected += 1
            found = self._evidence_of(row["Id"], now, cached[1] if cached else None)
            if found is not None:
                evidence[row["Id"]] = (status, found)
        self._evidence = evidence  # only what this list still shows: gone ones are forgotten
        return [{**_from_list(r), **evidence.get(r["Id"], ("", {}))[1]} for r in rows]

    def _evidence_of(
        self, container_id: str, now: float, before: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """What inspect (and, for a failing container, its last log lines) tell; None if gone.

        `now` is when the list was read, a little before this inspect: as the time of
        the evidence it errs early, never late. `before` is what the last inspect said.
        """
        try:
            attrs = self.client.api.inspect_container(container_id)
            found = _inspected(attrs, now)
            state = (attrs.get("State") or {}).get("Status")
            if state in _FAILING or found["health"] == "unhealthy":
                found["logs"] = self._last_logs(container_id)
            if found["restarts"] and found["last_exit_code"] is None:
                found.update(self._restart_cause(container_id, attrs, found, before))
        except docker.errors.NotFound:
            return None  # removed since the list call
        except docker.errors.APIError as exc:
            # One container Docker will not describe must not cost the node its heartbeat.
            log.warning("inspect %s: %s", container_id[:12], _explain(exc))
            return None
        return found

    def _restart_cause(
        self,
        container_id: str,
        attrs: dict[str, Any],
        found: dict[str, Any],
        before: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The exit code and length of the run Docker restarted it after, from its events.

        Running again, a container's state no longer says how its last run ended,
        only when (FinishedAt); Docker's `die` event at that moment does. Read once
        per exit: an earlier answer about the same FinishedAt is kept.
        """
        finished, started = found["finished_at"], found["started_at"]
        if before is not None and before.get("finished_at") == finished:
            return {k: before.get(k) for k in ("last_exit_code", "last_run")}
        if finished is None or started is None:
            return {}
        since = _epoch(attrs.get("Created")) or finished - YOUNG
        # Until the current run's start, in Docker's own clock: the stream ends at once.
        stream = self.client.api.events(
            since=_stamp(since - 1),
            until=_stamp(started),
            filters={"container": container_id, "type": "container", "event": ["start", "die"]},
            decode=True,
        )
        try:
            events = list(itertools.islice(stream, MAX_EVENTS))
        finally:
            stream.close()
        return _last_exit(events)

    def _last_logs(self, container_id: str) -> str | None:
        raw = self.client.api.logs(container_id, stdout=True, stderr=True, tail=LOG_LINES)
        return _evidence_text(raw.decode(errors="replace") if isinstance(raw, bytes) else raw)

    @_docker_errors
    def deploy(self, task: LeasedTask, node_id: str, cluster_id: str) -> Outcome:
        """Make this task's container run its spec; returns it as observed, and its image.

        Ensure the image, create the container, stop what it replaces, start
        it: an image that cannot be pulled or a spec Docker refuses stops
        nothing, and a container that will not start is undone (see _switch).
        """
        spec, name = task.payload, task.container
        if spec is None:
            raise TaskFailed(f"deploy task {task.id} carries no container spec")
        existing = self._get(name)
        if existing is not None:
            self._check_ours(existing, cluster_id)
            if existing.labels.get(Label.SPEC_HASH) == spec.container_hash:
                # Made before: by this task on an earlier attempt, or an older
                # revision kept stopped that a rollback now starts without a pull.
                if existing.status != ContainerState.RUNNING:
                    log.info("task %s: starting existing container %s", task.id, name)
                # A container that never ran is one a failed attempt half made.
                fresh = _epoch(existing.attrs.get("State", {}).get("StartedAt")) is None
                self._switch(task, existing, spec.replaces, cluster_id, discard=fresh)
                return self._deployed(existing, spec.image)
        self._ensure_image(task.id, spec.image, spec.pull)
        if existing is not None:
            # Same name, other spec: only a CP that does not put the hash in names
            # sends this, so the old container goes before the new one is made.
            log.info("task %s: replacing %s (spec changed)", task.id, name)
            _stop(existing)
            existing.remove(force=True)
        container = self._create(task, spec, node_id, cluster_id)
        self._switch(task, container, spec.replaces, cluster_id, discard=True)
        log.info("task %s: started %s (%s)", task.id, name, container.short_id)
        return self._deployed(container, spec.image)

    def _create(self, task: LeasedTask, spec: ContainerSpec, node_id: str, cluster_id: str) -> Any:
        api = self.client.api
        options = create_options(spec, task.container, task_labels(task, node_id, cluster_id))
        host_config = api.create_host_config(**options.pop("host_config"))
        created = api.create_container(**options, host_config=host_config)
        return self.client.containers.get(created["Id"])

    def _switch(
        self, task: LeasedTask, new: Any, replaces: Iterable[str], cluster_id: str, *, discard: bool
    ) -> None:
        """Stop the containers `new` replaces, then start `new` (a no-op if it runs).

        If Docker refuses either, `new` is removed when `discard` (it was
        never of use), the replaced ones stopped here are started again, and
        the task fails with Docker's words: the slot is left as it was.
        """
        stopped: list[Any] = []
        try:
            for old in self._replaced(task, replaces, cluster_id):
                log.info("task %s: stopping %s, which %s replaces", task.id, old.name, new.name)
                _stop(old)
                stopped.append(old)
            new.start()
        except docker.errors.APIError as exc:
            raise TaskFailed(self._undo(task, new, stopped, _explain(exc), discard)) from None
        new.reload()

    def _replaced(self, task: LeasedTask, names: Iterable[str], cluster_id: str) -> list[Any]:
        """The live containers to stop; a missing one is already out of the way."""
        found = []
        for name in names:
            old = self._get(name) if name != task.container else None
            if old is None or not ContainerState.is_live(old.status):
                continue
            if old.labels.get(Label.CLUSTER) != cluster_id:
                log.warning("task %s: %s is not this Docklet's; left alone", task.id, name)
                continue
            found.append(old)
        return found

    def _undo(
        self, task: LeasedTask, new: Any, stopped: list[Any], reason: str, discard: bool
    ) -> str:
        """Put the slot back as it was before a failed start; returns what to report."""
        problems = [reason]
        steps: list[tuple[str, Callable[[], Any]]] = [
            (f"start {old.name} again", old.start) for old in stopped
        ]
        if discard:
            steps.insert(0, (f"remove {new.name}", lambda: new.remove(force=True)))
        for what, step in steps:
            try:
                step()
            except docker.errors.APIError as exc:
                log.error("task %s: could not %s: %s", task.id, what, _explain(exc))
                problems.append(f"could not {what}: {_explain(exc)}")
        return "; ".join(problems)

    def _deployed(self, container: Any, image: str) -> Outcome:
        return Outcome(observed(container), self._digest(container, image))

    def _digest(self, container: Any, image: str) -> str | None:
        """`repo@sha256:…` of the image the container runs, else the image's id."""
        image_id = container.attrs.get("Image") or None
        if image_id is None:
            return None
        try:
            attrs = self.client.api.inspect_image(image_id)
        except docker.errors.NotFound:
            return image_id  # removed since: the id is still what ran
        repository = _repository(image)
        for ref in attrs.get("RepoDigests") or []:
            if _repository(ref) == repository:
                return str(ref)
        return str(attrs.get("Id") or image_id)

    @_docker_errors
    def stop(self, task: LeasedTask, cluster_id: str) -> dict[str, Any] | None:
        container = self._get(task.container)
        if container is None:
            return None
        self._check_ours(container, cluster_id)
        if ContainerState.is_live(container.status):
            _stop(container)
            container.reload()
        return observed(container)

    @_docker_errors
    def remove(self, task: LeasedTask, cluster_id: str) -> None:
        container = self._get(task.container)
        if container is None:
            return
        self._check_ours(container, cluster_id)
        if ContainerState.is_live(container.status):
            _stop(container)
        container.remove(force=True)

    def _get(self, name: str) -> Any:
        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None

    @staticmethod
    def _check_ours(container: Any, cluster_id: str) -> None:
        if container.labels.get(Label.CLUSTER) != cluster_id:
            raise TaskFailed(
                f"a container named {container.name} exists that this Docklet does not manage;"
                " rename or remove it"
            )

    def _ensure_image(self, task_id: int, image: str, pull: str) -> None:
        if pull != "always":
            try:
                self.client.images.get(image)  # a `repo@sha256:…` is looked up by its digest
                return
            except docker.errors.ImageNotFound:
                if pull == "never":
                    raise TaskFailed(
                        f"image {image} is not on this node and the pull policy is 'never'"
                    ) from None
        log.info("task %s: pulling %s", task_id, image)
        repository, tag = docker.utils.parse_repository_tag(image)
        try:
            # Streamed so a failure reported mid-pull is seen: images.pull drops it.
            progress = self.client.api.pull(
                repository, tag=tag or "latest", stream=True, decode=True
            )
            for chunk in progress:
                error = (chunk.get("errorDetail") or {}).get("message") or chunk.get("error")
                if error:
                    raise TaskFailed(f"pull {image}: {str(error).strip()}")
        except docker.errors.APIError as exc:
            raise TaskFailed(f"pull {image}: {_explain(exc)}") from None

    # -- logs (the log relay) ----------------------------------------------------

    def logs(
        self,
        name: str,
        *,
        tail: int = 100,
        since: float | None = None,
        follow: bool = False,
        timestamps: bool = False,
    ) -> LogLines | None:
        """One container's `docker logs` (stdout and stderr) as lines; None if no such container.

        Read on a client of its own, without a read timeout: a quiet container
        keeps a follow open for hours, and the task pool's connections stay free.
        `LogLines.close()` from another thread ends it.
        """
        try:
            raw = self._log_client().logs(
                name,
                stdout=True,
                stderr=True,
                stream=True,
                follow=follow,
                tail=tail,
                since=since if since and since > 0 else None,
                timestamps=True,  # Docker's time of each line: kept when asked for
            )
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            raise TaskFailed(_explain(exc)) from None
        except (OSError, docker.errors.DockerException) as exc:
            raise self.unavailable(exc) from None
        return LogLines(raw, timestamps=timestamps)

    def _log_client(self) -> docker.APIClient:
        if self._logs_api is None:
            if self._explicit_url:
                self._logs_api = docker.APIClient(
                    base_url=self._explicit_url, version="auto", timeout=None
                )
            elif self._client is not None:
                self._logs_api = self._client.api  # an injected client: its own settings
            else:
                self._logs_api = docker.from_env(version="auto", timeout=None).api
        return self._logs_api


def _stop(container: Any) -> None:
    """`docker stop` with the container's own grace period (its stop_grace_period).

    Passing it explicitly makes the SDK wait that much longer than its usual
    call timeout, so a long grace period is not mistaken for a hung engine.
    """
    grace = (container.attrs.get("Config") or {}).get("StopTimeout")
    if grace is None:
        container.stop()
    else:
        container.stop(timeout=grace)


def observed(container: Any) -> dict[str, Any]:
    """A container as the CP records it, from an inspected container."""
    state = container.attrs.get("State", {})
    return {
        "id": container.id,
        "name": container.name,
        "image": container.attrs.get("Config", {}).get("Image", ""),
        "state": state.get("Status", container.status),
        "exit_code": state.get("ExitCode"),
        "labels": container.labels,
        **_inspected(container.attrs, time.time()),
    }


def _inspected(attrs: dict[str, Any], now: float) -> dict[str, Any]:
    """What only inspect tells of a container: its runs, restarts and health, as of `now`."""
    state = attrs.get("State") or {}
    health = state.get("Health") or {}
    checks = health.get("Log") or []
    started, finished = _epoch(state.get("StartedAt")), _epoch(state.get("FinishedAt"))
    # Not running, the state is of the run that ended (a restart resets the exit code).
    ended = finished is not None and state.get("Status") not in _UP_STATES
    return {
        "started_at": started,
        "finished_at": finished,
        "last_exit_code": state.get("ExitCode") if ended else None,
        "last_run": _run_length(started, finished) if ended else None,
        "inspected_at": now,
        "restarts": attrs.get("RestartCount") or 0,
        "health": health.get("Status"),
        "health_log": _evidence_text(checks[-1].get("Output")) if checks else None,
    }


def _last_exit(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The exit code and run length of the last `die` among a container's events."""
    dies = [e for e in events if e.get("Action") == "die"]
    if not dies:
        return {}  # older than what Docker keeps of its events: not known
    die = dies[-1]
    code = ((die.get("Actor") or {}).get("Attributes") or {}).get("exitCode", "")
    starts = [
        e["timeNano"]
        for e in events
        if e.get("Action") == "start" and e.get("timeNano", 0) <= die.get("timeNano", 0)
    ]
    run = (die["timeNano"] - starts[-1]) / 1e9 if starts and "timeNano" in die else None
    return {
        "last_exit_code": int(code) if code.lstrip("-").isdigit() and len(code) < 10 else None,
        "last_run": run,
    }


def _run_length(started: float | None, finished: float | None) -> float | None:
    if started is None or finished is None or finished < started:
        return None
    return finished - started


def _stamp(moment: float) -> str:
    """Epoch seconds as the Engine API's `since`/`until` take them: seconds.nanoseconds."""
    seconds = int(moment)
    return f"{seconds}.{int((moment - seconds) * 1e9):09d}"


def _from_list(row: dict[str, Any]) -> dict[str, Any]:
    """A container as the CP records it, from one row of a list call (no inspect)."""
    status = row.get("Status", "")
    exit_code = _EXIT.search(status)
    health = _HEALTH.search(status)
    return {
        "id": row["Id"],
        "name": (row.get("Names") or ["/?"])[0].lstrip("/"),
        "image": row.get("Image", ""),
        "state": row.get("State", ContainerState.UNKNOWN),
        "health": health.group(1).replace("health: ", "") if health else None,
        "exit_code": int(exit_code.group(1)) if exit_code else None,
        "restarts": 0,
        "labels": row.get("Labels") or {},
        # Only inspect tells these (see Engine.observe).
        "health_log": None,
        "logs": None,
        "started_at": None,
        "finished_at": None,
        "last_exit_code": None,
        "last_run": None,
        "inspected_at": None,
    }


_FAILING = (ContainerState.EXITED, ContainerState.RESTARTING)
_UP_STATES = (ContainerState.RUNNING, ContainerState.PAUSED)


def _still_true(cached: tuple[str, dict[str, Any]], row: dict[str, Any], now: float) -> bool:
    """Whether what an inspect told of this container still holds, by its list row.

    A stopped one: the same `Status` text. A running one: the same health, an
    uptime that matches the start time inspect gave (a container that restarted
    since shows a shorter one), and an inspect young enough to trust
    (TRUSTED_SHARE). Never a restarting one. The text alone is no proof for a
    running container: "Up Less than a second" comes back at every crash.
    """
    status, found = cached
    text, state = row.get("Status", ""), row.get("State")
    if state not in (ContainerState.RUNNING, ContainerState.RESTARTING):
        return text == status
    started, read, up = found.get("started_at"), found.get("inspected_at"), _UP.match(text)
    if started is None or read is None or up is None or state != ContainerState.RUNNING:
        return False
    if _health_of(text) != _health_of(status):
        return False
    low, high = _uptime(up)
    matches = low - UP_SLACK <= now - started <= high + UP_SLACK
    return matches and now - read < TRUSTED_SHARE * (read - started)


def _health_of(status: str) -> str | None:
    found = _HEALTH.search(status)
    return found.group(1) if found else None


def _uptime(up: re.Match[str]) -> tuple[float, float]:
    """The bounds, in seconds, of an uptime Docker gave in words."""
    seconds, minutes, hours = up.group(2), up.group(3), up.group(4)
    if seconds:
        return int(seconds), int(seconds) + 1
    if minutes:
        return int(minutes) * 60, (int(minutes) + 1) * 60
    if hours:
        return int(hours) * 3600, (int(hours) + 1) * 3600
    return {
        "Less than a second": (0, 1),
        "About a minute": (60, 120),
        "About an hour": (3600, 7200),
    }[up.group(1)]


def _worth_inspecting(row: dict[str, Any], now: float) -> bool:
    """Young, or started lately (a rollout may be judging it: a rollback starts a kept
    container again), or not running (its evidence may be wanted)."""
    if row.get("State") != ContainerState.RUNNING or now - (row.get("Created") or 0) < YOUNG:
        return True
    up = _UP.match(row.get("Status", ""))
    return up is not None and _uptime(up)[0] < YOUNG


def _epoch(text: str | None) -> float | None:
    """Docker's RFC 3339 time as epoch seconds; None for its zero time ("never")."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(_NANOS.sub(r"\1", text)).timestamp()
    except ValueError:
        log.debug("unreadable Docker time %r", text)
        return None
    return moment if moment > 0 else None


def _evidence_text(text: str | None) -> str | None:
    """Output kept as evidence: trimmed, its last MAX_EVIDENCE characters (the end says most)."""
    text = (text or "").strip()
    return text[-MAX_EVIDENCE:] or None


def _repository(reference: str) -> str:
    """The repository of an image reference, as Docker writes it in RepoDigests."""
    name = reference.split("@", 1)[0]
    head, colon, tail = name.rpartition(":")
    if colon and "/" not in tail:  # a tag, not a registry's port
        name = head
    for prefix in ("docker.io/", "index.docker.io/"):
        name = name.removeprefix(prefix)
    return name.removeprefix("library/")


class LogLines:
    """One container's log lines as (Docker's time or None, text), until closed or ended.

    Docker sends lines in frames that need not end where a line does (it cuts
    long lines at 16 KiB): text is joined until a newline, and a line longer
    than MAX_PARTIAL bytes is passed on in pieces rather than held.
    """

    def __init__(self, raw: Any, *, timestamps: bool) -> None:
        self._raw = raw
        self.timestamps = timestamps
        self.closed = False

    def close(self) -> None:
        """End the read, from any thread; a read blocked in Docker returns at once."""
        self.closed = True
        try:
            self._raw.close()
        except Exception:  # already closed, or its socket gone: ended all the same
            log.debug("closing a log stream", exc_info=True)

    def __iter__(self) -> Iterator[tuple[float | None, str]]:
        pending = b""
        try:
            for chunk in self._raw:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                if len(pending) > MAX_PARTIAL:
                    complete.append(pending)
                    pending = b""
                for line in complete:
                    yield self._line(line)
        except Exception:  # closed from another thread, or Docker went away: the end
            if not self.closed:
                log.debug("log stream ended", exc_info=True)
        if pending and not self.closed:
            yield self._line(pending)

    def _line(self, raw: bytes) -> tuple[float | None, str]:
        text = raw.decode(errors="replace").rstrip("\r")
        stamp, _, rest = text.partition(" ")
        moment = _epoch(stamp)
        if moment is None:  # a piece of a long line carries no time of its own
            return None, text
        return (moment if self.timestamps else None), rest
