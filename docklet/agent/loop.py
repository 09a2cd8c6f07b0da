"""The agent: one per Docker host; pulls its work from the control plane.

Three loops share one registration: heartbeats (every container Docklet
manages on this engine, with start time, restarts, health output and last
log lines for the young and failing ones a rollout judges, and whether Docker
answers at all), the task poller
(long-poll for as many tasks as there are free workers) and one lease
renewer. Tasks run on a bounded pool of workers, one lane per container
(docklet.agent.pool); running one and reporting it is here. No loop ever
dies: a control plane or a Docker engine that does not answer is logged
and retried with backoff.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import click

from docklet import __version__
from docklet.agent import identity
from docklet.agent.backoff import Backoff, jittered
from docklet.agent.channel import Channel, Poster
from docklet.agent.engine import Engine, Outcome
from docklet.agent.pool import TaskPool
from docklet.agent.relay import Limits, Relay
from docklet.agent.settings import AgentConfig
from docklet.common import defaults, logs
from docklet.common import settings as settings_table
from docklet.common.errors import (
    APIError,
    BadRequest,
    CPUnreachable,
    DockerUnavailable,
    DockletError,
    StaleLease,
    TaskFailed,
)
from docklet.common.status import TaskKind, TaskStatus
from docklet.wire.client import Client
from docklet.wire.protocol import (
    LeasedTask,
    LogRequest,
    RegistrationReply,
    TaskBatch,
    parse,
)

log = logging.getLogger(__name__)

DOCKER_POOL_SPARE = 4  # Docker connections beyond one per worker: heartbeat, ping, info
EARLY = 0.5  # an empty poll that answered within this share of its wait was not a long-poll
MAX_POLL_AFTER = 300.0  # a longer `poll_after` from a CP is not believed


def docker_detail(exc: DockletError) -> str:
    """The SDK's own words, for the agent's log only (people see `exc.message`)."""
    detail = exc.details.get("detail")
    return f" ({detail})" if detail else ""


class Agent:
    """One Docker engine's agent: registers it, reports on it, and runs the tasks leased to it."""

    def __init__(self, config: AgentConfig, *, engine: Engine | None = None) -> None:
        self.config = config
        self.cp = Client(config.cp)
        self.engine = engine or Engine(
            timeout=config.docker_timeout, max_pool_size=config.concurrency + DOCKER_POOL_SPARE
        )
        self.node_id = ""
        self.cluster_id = ""
        self.stop = threading.Event()
        self._cp_interval = defaults.HEARTBEAT_INTERVAL  # until registration says
        self._generation = 0  # registrations so far: a refusal of an older one is moot
        self._registered = threading.Lock()
        # Refused tokens (401) re-register after this, doubling: a replaced agent
        # and its replacement do not trade the node back and forth quickly.
        self._refused = Backoff(config.retry_max, first=1.0)
        # Set by a heartbeat whose answer says tasks wait: the poller asks at once.
        self.tasks_waiting = threading.Event()
        self._lock = threading.Lock()  # guards the report sequence and the registration
        self._report_seq = 0
        self._pool = TaskPool(config.concurrency, self.stop, run=self.run_task, renew=self._renew)
        self._poll_after: float | None = None  # the CP had no long-poll slot: wait this long
        # The log relay: its own threads and Docker connection, never the pool's.
        limits = Limits(
            streams=config.log_streams,
            stream_time=config.log_stream_time,
            batch_every=config.log_batch_every,
        )
        poster = Poster(self.cp, lambda: self.node_id)
        self.relay = Relay(self.engine, poster, limits)
        self.channel = Channel(
            self.cp,
            lambda: (self.node_id, self._generation),
            self.relay.handle,
            self._reregister_if_refused,
            self.stop,
            retry_max=config.retry_max,
        )
        poster.channel = self.channel  # batches go up the channel while it is open

    @property
    def heartbeat_interval(self) -> float:
        return self.config.heartbeat_interval or self._cp_interval

    @property
    def report_seq(self) -> int:
        with self._lock:
            return self._report_seq

    def _next_seq(self) -> int:
        with self._lock:
            self._report_seq += 1
            return self._report_seq

    # -- registration --------------------------------------------------------

    def register(self) -> None:
        """Register (again), waiting out a Docker engine or CP that does not answer."""
        backoff = Backoff(self.config.retry_max)
        while not self.stop.is_set():
            try:
                info = self.engine.info()
                reply = self._registration(info)
            except BadRequest as exc:
                log.error(
                    "register: %s gave an answer this agent cannot use: %s; retrying in %.1fs",
                    self.cp.base_url,
                    exc.message,
                    backoff.current,
                )
                backoff.wait(self.stop)
                continue
            except DockletError as exc:
                log.warning(
                    "register: %s%s; retrying in %.1fs",
                    exc.message,
                    docker_detail(exc),
                    backoff.current,
                )
                backoff.wait(self.stop)
                continue
            with self._lock:
                self.node_id, self.cluster_id = reply.node_id, reply.cluster_id
                self.cp.token = reply.token
                self._cp_interval = reply.heartbeat_interval
                self._report_seq = 0  # the CP starts this node's count again too
                self._generation += 1
            identity.save(self.config.state_dir, self.config.cp, reply.node_id, reply.token)
            log.info(
                "registered as node %s with %s (Docker %s)",
                self.node_id,
                self.cp.base_url,
                info["docker_version"],
            )
            return

    def _registration(self, info: dict[str, Any]) -> RegistrationReply:
        body = {
            "engine_id": info["engine_id"],
            "name": self.config.node_name or info["hostname"],
            "info": {**info, "agent_version": __version__},
        }
        return parse(RegistrationReply, self._joining_client().post("/api/agents/register", body))

    def _joining_client(self) -> Client:
        """A client with what proves this agent may register: its node token, the join token."""
        saved = self.cp.token or identity.load(self.config.state_dir, self.config.cp)
        client = Client(self.cp.base_url, token=saved or None)
        if self.config.join_token:
            client.headers["X-Docklet-Join-Token"] = self.config.join_token
        return client

    def _reregister_if_refused(self, exc: APIError, generation: int) -> bool:
        """React to the CP refusing this agent's token; True when handled.

        404: the CP no longer knows the node (its data was reset): register
        again. 401: its token was replaced, by a registration of its own that
        the CP finished after the agent had given up on it (an overloaded CP),
        or by another agent on the same Docker engine: it registers again after
        a jittered backoff that doubles with every refusal (up to --retry-max),
        so the agent never stops for good because the CP was slow, and two
        agents on one engine trade the node slowly rather than in a tight loop.
        A refusal of a token this agent has already replaced itself is moot.
        """
        if exc.status not in (401, 404) or (exc.status == 404 and exc.code != "not_found"):
            return False
        with self._registered:
            if generation != self._generation:
                return True  # another loop registered again meanwhile
            if exc.status == 401:
                log.warning(
                    "node %s: %s; registering again in %.1fs",
                    self.node_id,
                    exc.message,
                    self._refused.current,
                )
                self._refused.wait(self.stop)
            else:
                log.warning("node %s: %s; registering again", self.node_id, exc.message)
            self.register()
        return True

    # -- heartbeats ----------------------------------------------------------

    def heartbeat_once(self) -> None:
        seq = self.report_seq  # read before listing: see nodes.heartbeat
        body: dict[str, Any] = {"report_seq": seq}
        try:
            body["containers"] = self.engine.list_managed(self.cluster_id)
            body["docker_ok"] = True
        except DockletError as exc:
            # Never report "no containers" because the list call failed.
            log.warning("node %s: %s%s", self.node_id, exc.message, docker_detail(exc))
            body.update(docker_ok=False, docker_error=exc.message)
        reply = self.cp.post(f"/api/agents/{self.node_id}/heartbeat", body)
        self._refused.reset()  # the token is good
        if isinstance(reply, dict) and reply.get("tasks_waiting") is True:
            self.tasks_waiting.set()
        if isinstance(reply, dict) and isinstance(reply.get("logs"), list):
            self._log_requests(reply["logs"][:100])

    def _log_requests(self, items: list[Any]) -> None:
        """Log requests a heartbeat's answer carries (the node had no channel open)."""
        for item in items:
            try:
                self.relay.handle(parse(LogRequest, item))
            except BadRequest as exc:
                log.warning("heartbeat: a log request this agent cannot use: %s", exc.message)

    def heartbeat_loop(self, max_iterations: int | None = None) -> None:
        done = 0
        while not self.stop.is_set() and (max_iterations is None or done < max_iterations):
            generation = self._generation
            interval = self.heartbeat_interval
            try:
                self.heartbeat_once()
            except APIError as exc:
                if not self._reregister_if_refused(exc, generation):
                    log.warning("heartbeat refused: %s", exc.message)
                    interval = jittered(interval)  # a 503: not in step with the others
            except CPUnreachable as exc:
                log.warning("heartbeat: %s", exc.message)
                interval = jittered(interval)
            except Exception:
                log.exception("heartbeat: unexpected error")
            done += 1
            self.stop.wait(interval)

    # -- leasing tasks ---------------------------------------------------------

    def poll_once(self, wait: float | None = None) -> int:
        """Long-poll for as many tasks as there are free workers and start them.

        Returns how many were leased; they run in the background (see `drain`).
        """
        free = self._pool.free()
        if free <= 0:
            return 0
        wait = self.config.poll_wait if wait is None else wait
        reply = self.cp.get(
            f"/api/agents/{self.node_id}/tasks?wait={wait:g}&max={free}",
            timeout=wait + self.cp.timeout,
        )
        leased = self._parse_tasks(reply)
        self._poll_after = reply.get("poll_after") if isinstance(reply, dict) else None
        if self.stop.is_set():
            return 0  # shutting down: the CP hands these out again when we re-register
        self._pool.accept(leased)
        return len(leased)

    def _parse_tasks(self, reply: Any) -> list[LeasedTask]:
        """The leased tasks; one this agent cannot read is failed at once, not left to expire."""
        try:
            return list(parse(TaskBatch, reply).tasks)
        except BadRequest:
            if not isinstance(reply, dict) or not isinstance(reply.get("tasks"), list):
                raise
        usable = []
        for item in reply["tasks"]:
            try:
                usable.append(parse(LeasedTask, item))
            except BadRequest as exc:
                self._refuse(item, exc.message)
        return usable

    def _refuse(self, item: Any, problem: str) -> None:
        log.error("the control plane leased a task this agent cannot use: %s", problem)
        task_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(task_id, int) or not isinstance(item.get("lease_token"), str):
            return  # nothing to report it under: its lease runs out
        body = {
            "status": TaskStatus.FAILED,
            "lease_token": item["lease_token"],
            "error": f"agent {__version__} cannot run this task: {problem}",
        }
        try:
            self.cp.post(f"/api/agents/{self.node_id}/tasks/{task_id}", body)
        except DockletError as exc:
            log.warning("task %s: report refused: %s", task_id, exc.message)

    def task_loop(self, max_iterations: int | None = None) -> None:
        backoff = Backoff(self.config.retry_max)
        done = 0
        while not self.stop.is_set() and (max_iterations is None or done < max_iterations):
            done += 1
            if not self._pool.wait_for_capacity():
                break
            generation = self._generation
            try:
                self.engine.ping()  # no lease while Docker is down: the work would only wait
                # Tasks a heartbeat said wait are asked for at once, long-poll slot or not.
                wait = 0.0 if self.tasks_waiting.is_set() else self.config.poll_wait
                self.tasks_waiting.clear()
                started = time.monotonic()
                leased = self.poll_once(wait)
                backoff.reset()
                if not leased and wait > 0 and time.monotonic() - started < wait * EARLY:
                    self._pause()
            except APIError as exc:
                if not self._reregister_if_refused(exc, generation):
                    log.warning("task poll refused: %s", exc.message)
                    backoff.wait(self.stop)
            except BadRequest as exc:
                log.error(
                    "task poll: %s gave an answer this agent cannot use: %s; retrying in %.1fs",
                    self.cp.base_url,
                    exc.message,
                    backoff.current,
                )
                backoff.wait(self.stop)
            except DockerUnavailable as exc:
                log.warning(
                    "node %s: %s%s; retrying in %.1fs",
                    self.node_id,
                    exc.message,
                    docker_detail(exc),
                    backoff.current,
                )
                backoff.wait(self.stop)
            except CPUnreachable as exc:
                log.warning("task poll: %s; retrying in %.1fs", exc.message, backoff.current)
                backoff.wait(self.stop)
            except Exception:  # never let one bad answer end the agent
                log.exception("task loop: unexpected error; retrying in %.1fs", backoff.current)
                backoff.wait(self.stop)

    def _pause(self) -> None:
        """After an early, empty answer (no long-poll slot free, or this poll was replaced).

        Waits a jittered while rather than asking again at once: what the CP
        said (`poll_after`, when it had no long-poll slot), else up to one
        heartbeat interval. A heartbeat that says tasks wait ends it early.
        """
        after = self._poll_after
        valid = isinstance(after, int | float) and 0 < after <= MAX_POLL_AFTER
        until = time.monotonic() + jittered(after if valid else self.heartbeat_interval)
        while not self.stop.is_set() and not self.tasks_waiting.is_set():
            left = until - time.monotonic()
            if left <= 0:
                return
            self.tasks_waiting.wait(min(left, 0.5))  # `stop` is looked at now and then

    # -- running tasks -----------------------------------------------------------

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every held task has ended (when stopping: every running one).

        Returns False if some are still going after `timeout` seconds.
        """
        return self._pool.drain(timeout)

    def run_task(self, task: LeasedTask) -> bool:
        """Execute one task and report it; False when Docker being down left it for a retry."""
        with logs.context(
            node=self.node_id or None, app=task.app, task=task.id, revision=task.revision
        ):
            return self._run_task(task)

    def _run_task(self, task: LeasedTask) -> bool:
        log.info("task %s: %s %s (revision %s)", task.id, task.kind, task.container, task.revision)
        try:
            outcome = self._execute(task)
        except TaskFailed as exc:
            log.warning("task %s: failed: %s", task.id, exc.message)
            self._report(task, TaskStatus.FAILED, error=exc.message)
            return True
        except DockerUnavailable as exc:
            # Not the task's fault: its lease runs out and it is handed out again.
            log.warning("task %s: %s%s; left for a retry", task.id, exc.message, docker_detail(exc))
            return False
        except Exception as exc:  # a bug here must fail one task, not the agent
            log.exception("task %s: agent error", task.id)
            error = f"agent error ({type(exc).__name__}); see the agent's log on {self.node_id}"
            self._report(task, TaskStatus.FAILED, error=error)
            return True
        self._report(task, TaskStatus.DONE, outcome=outcome)
        return True

    def _execute(self, task: LeasedTask) -> Outcome | None:
        """Run the task in Docker; what it left behind (nothing, for a removal)."""
        if task.kind == TaskKind.DEPLOY:
            return self.engine.deploy(task, self.node_id, self.cluster_id)
        if task.kind == TaskKind.STOP:
            container = self.engine.stop(task, self.cluster_id)
            return Outcome(container) if container else None
        if task.kind == TaskKind.REMOVE:
            self.engine.remove(task, self.cluster_id)
            return None
        raise TaskFailed(f"this agent ({__version__}) does not know task kind {task.kind!r}")

    def _report(
        self,
        task: LeasedTask,
        status: TaskStatus,
        *,
        error: str | None = None,
        outcome: Outcome | None = None,
    ) -> None:
        task = self._pool.current(task)
        container = outcome.container if outcome else None
        # Numbered after the Docker work ended: a heartbeat that read an equal or
        # higher number listed containers after this task's change.
        body = {
            "status": status,
            "lease_token": task.lease_token,
            "seq": self._next_seq(),
            "error": error,
            "container": container,
            "container_id": container["id"] if container else None,
            "image_digest": outcome.image_digest if outcome else None,
        }
        # A busy or restarting CP is asked again while the lease lives (the renewer
        # keeps it: the task is still held): a lost report would cost a lease's
        # length and a second run of the task.
        backoff = Backoff(self.config.retry_max)
        give_up = time.monotonic() + task.lease_seconds
        while True:
            try:
                self.cp.post(f"/api/agents/{self.node_id}/tasks/{task.id}", body)
                return
            except APIError as exc:
                if exc.status != 503 or time.monotonic() > give_up or self.stop.is_set():
                    # A stale lease: the task was handed out again and will be run again.
                    log.warning("task %s: report refused: %s", task.id, exc.message)
                    return
            except CPUnreachable as exc:
                if time.monotonic() > give_up or self.stop.is_set():
                    log.warning(
                        "task %s: report lost (%s); the task will be retried", task.id, exc.message
                    )
                    return
            backoff.wait(self.stop)
            body["lease_token"] = self._pool.current(task).lease_token  # leased again meanwhile?

    # -- lease renewal -------------------------------------------------------------

    def _renew(self, task: LeasedTask) -> None:
        """Keep one task's lease; the pool's renewer calls this when it is due."""
        task = self._pool.current(task)
        try:
            self.cp.post(
                f"/api/agents/{self.node_id}/tasks/{task.id}",
                {"status": TaskStatus.RUNNING, "lease_token": task.lease_token},
            )
        except DockletError as exc:
            # Stale: the task ended meanwhile, or was handed out again after a re-registration.
            level = logging.INFO if exc.code == StaleLease.code else logging.WARNING
            log.log(level, "task %s: lease not renewed: %s", task.id, exc.message)

    # -- the whole agent -------------------------------------------------------

    def run(self) -> None:
        """Register, then heartbeat and run tasks until `stop`; then let running tasks end."""
        self.register()
        if self.stop.is_set():
            return
        for loop in (self.heartbeat_loop, self.task_loop, self.channel.loop):
            threading.Thread(target=loop, daemon=True, name=loop.__name__).start()
        while not self.stop.wait(1.0):
            pass
        self.channel.close()
        self.relay.close()
        # The poller may sit in a long poll: it is a daemon and is left there;
        # whatever it leases now is not started (see poll_once).
        running = self._pool.running()
        if running:
            log.info("stopping: waiting for %d running task(s) to finish", running)
        self.drain()
        self._pool.shutdown(wait=False, cancel_futures=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@settings_table.options(AgentConfig)
@click.version_option(__version__, prog_name="docklet-agent")
def main(**options: Any) -> None:
    """Run the Docklet agent on this Docker host.

    Example: DOCKLET_CP=http://cp.example:8080 docklet-agent
    """
    config = settings_table.build(AgentConfig, options)
    logs.setup(config.log_level, config.log_format)
    agent = Agent(config)

    def shutdown(*_: object) -> None:
        if agent.stop.is_set():
            raise SystemExit(1)  # asked twice: do not wait for running tasks
        agent.stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, shutdown)
    log.info("agent %s starting; control plane %s", __version__, config.cp)
    agent.run()
    log.info("agent stopped")
