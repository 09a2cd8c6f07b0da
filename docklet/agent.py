"""The agent: one per Docker host; pulls its work from the control plane.

Two loops share one registration: heartbeats (every container Docklet
manages on this engine, and whether Docker answers at all) and tasks
(long-poll, execute, report). Neither loop ever dies: a control plane or a
Docker engine that does not answer is logged and retried with backoff.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import click

from docklet import __version__, defaults, logs
from docklet.client import Client
from docklet.engine import Engine, TaskFailed
from docklet.errors import APIError, CPUnreachable, DockerUnavailable, DockletError

log = logging.getLogger(__name__)


class Backoff:
    """Doubling waits, capped, reset by success."""

    def __init__(self, cap: float, first: float = 0.5) -> None:
        self.cap, self.first, self.current = cap, first, first

    def wait(self, stop: threading.Event) -> None:
        stop.wait(self.current)
        self.current = min(self.current * 2, self.cap)

    def reset(self) -> None:
        self.current = self.first


class Agent:
    def __init__(
        self,
        cp_url: str,
        *,
        name: str | None = None,
        engine: Engine | None = None,
        heartbeat_interval: float | None = None,
        poll_wait: float = defaults.LONG_POLL_WAIT,
    ) -> None:
        self.cp = Client(cp_url)
        self.name = name
        self.engine = engine or Engine()
        self.interval_override = heartbeat_interval
        self.heartbeat_interval = heartbeat_interval or defaults.HEARTBEAT_INTERVAL
        self.poll_wait = poll_wait
        self.node_id = ""
        self.cluster_id = ""
        self.report_seq = 0
        self.stop = threading.Event()
        self.busy = False  # executing a task: a shutdown waits for it to finish
        self._registered = threading.Lock()

    # -- registration --------------------------------------------------------

    def register(self) -> None:
        """Register (again), waiting out a Docker engine or CP that does not answer."""
        backoff = Backoff(defaults.RETRY_MAX)
        while not self.stop.is_set():
            try:
                info = self.engine.info()
                name = self.name or info["hostname"]
                reply = Client(self.cp.base_url).post(
                    "/api/agents/register",
                    {
                        "engine_id": info["engine_id"],
                        "name": name,
                        "info": {**info, "agent_version": __version__},
                    },
                )
                self.node_id, self.cluster_id = reply["node_id"], reply["cluster_id"]
                self.cp.token = reply["token"]
                interval = float(reply["heartbeat_interval"])
            except DockletError as exc:
                log.warning("register: %s; retrying in %.1fs", exc.message, backoff.current)
                backoff.wait(self.stop)
                continue
            except (KeyError, TypeError, ValueError) as exc:
                log.warning(
                    "register: unexpected answer from %s (%r); retrying in %.1fs",
                    self.cp.base_url,
                    exc,
                    backoff.current,
                )
                backoff.wait(self.stop)
                continue
            self.report_seq = 0
            self.heartbeat_interval = self.interval_override or interval
            log.info(
                "registered as node %s with %s (Docker %s)",
                self.node_id,
                self.cp.base_url,
                info["docker_version"],
            )
            return

    def _reregister_if_refused(self, exc: APIError) -> bool:
        """React to the CP refusing this agent's token; True when handled.

        404: the CP no longer knows the node (its data was reset): register
        again. 401: another agent registered for this Docker engine since, so
        this one is the stale one: it stops rather than fight over the node.
        """
        if exc.status == 404 and exc.code == "not_found":
            with self._registered:
                log.warning("node %s: %s; registering again", self.node_id, exc.message)
                self.register()
            return True
        if exc.status == 401:
            log.error(
                "node %s: %s; another agent now serves this Docker engine, so this one stops",
                self.node_id,
                exc.message,
            )
            self.stop.set()
            return True
        return False

    # -- heartbeats ----------------------------------------------------------

    def heartbeat_once(self) -> None:
        seq = self.report_seq  # read before listing: see nodes.heartbeat
        body: dict[str, Any] = {"report_seq": seq}
        try:
            body["containers"] = self.engine.list_managed(self.cluster_id)
            body["docker_ok"] = True
        except DockletError as exc:
            # Never report "no containers" because the list call failed.
            log.warning("node %s: %s", self.node_id, exc.message)
            body.update(docker_ok=False, docker_error=exc.message)
        self.cp.post(f"/api/agents/{self.node_id}/heartbeat", body)

    def heartbeat_loop(self, max_iterations: int | None = None) -> None:
        done = 0
        while not self.stop.is_set() and (max_iterations is None or done < max_iterations):
            try:
                self.heartbeat_once()
            except APIError as exc:
                if not self._reregister_if_refused(exc):
                    log.warning("heartbeat refused: %s", exc.message)
            except CPUnreachable as exc:
                log.warning("heartbeat: %s", exc.message)
            except Exception:
                log.exception("heartbeat: unexpected error")
            done += 1
            self.stop.wait(self.heartbeat_interval)

    # -- tasks -----------------------------------------------------------------

    def poll_once(self) -> int:
        """Long-poll for tasks and run each; returns how many ran."""
        reply = self.cp.get(
            f"/api/agents/{self.node_id}/tasks?wait={self.poll_wait:g}",
            timeout=self.poll_wait + defaults.HTTP_TIMEOUT,
        )
        ran = 0
        for task in reply["tasks"]:
            if self.stop.is_set():
                break  # shutting down: the CP hands these out again when we re-register
            self.busy = True
            try:
                self.run_task(task)
            finally:
                self.busy = False
            ran += 1
        return ran

    def task_loop(self, max_iterations: int | None = None) -> None:
        backoff = Backoff(defaults.RETRY_MAX)
        done = 0
        while not self.stop.is_set() and (max_iterations is None or done < max_iterations):
            done += 1
            try:
                self.engine.ping()  # no lease while Docker is down: the work would only wait
                self.poll_once()
                backoff.reset()
            except APIError as exc:
                if not self._reregister_if_refused(exc):
                    log.warning("task poll refused: %s", exc.message)
                    backoff.wait(self.stop)
            except DockerUnavailable as exc:
                log.warning(
                    "node %s: %s; retrying in %.1fs", self.node_id, exc.message, backoff.current
                )
                backoff.wait(self.stop)
            except CPUnreachable as exc:
                log.warning("task poll: %s; retrying in %.1fs", exc.message, backoff.current)
                backoff.wait(self.stop)
            except Exception:  # never let one bad answer end the agent
                log.exception("task loop: unexpected error; retrying in %.1fs", backoff.current)
                backoff.wait(self.stop)

    def run_task(self, task: dict[str, Any]) -> None:
        """Execute one task and report it; Docker being down leaves it for a retry."""
        log.info(
            "task %s: %s %s (revision %s)",
            task["id"],
            task["kind"],
            task["container"],
            task.get("revision"),
        )
        renew = threading.Event()
        threading.Thread(target=self._renew_lease, args=(task, renew), daemon=True).start()
        try:
            container = self._execute(task)
        except TaskFailed as exc:
            log.warning("task %s: failed: %s", task["id"], exc.message)
            self._report(task, "failed", error=exc.message)
            return
        except DockerUnavailable:
            raise  # not the task's fault: its lease runs out and it is retried
        except Exception as exc:  # a bug here must fail one task, not the agent
            log.exception("task %s: agent error", task["id"])
            self._report(task, "failed", error=f"agent error: {exc!r}")
            return
        finally:
            renew.set()
        self._report(task, "done", container=container)

    def _execute(self, task: dict[str, Any]) -> dict[str, Any] | None:
        kind = task["kind"]
        if kind == "deploy":
            return self.engine.deploy(task, self.node_id, self.cluster_id)
        if kind == "stop":
            return self.engine.stop(task, self.cluster_id)
        if kind == "remove":
            self.engine.remove(task, self.cluster_id)
            return None
        raise TaskFailed(f"this agent ({__version__}) does not know task kind {kind!r}")

    def _renew_lease(self, task: dict[str, Any], done: threading.Event) -> None:
        """Keep the lease while a long pull runs, so the task is not handed out again."""
        while not done.wait(task["lease_seconds"] / 3):
            try:
                self.cp.post(
                    f"/api/agents/{self.node_id}/tasks/{task['id']}",
                    {"status": "running", "lease_token": task["lease_token"]},
                )
            except DockletError as exc:
                log.warning("task %s: lease renewal failed: %s", task["id"], exc.message)

    def _report(
        self,
        task: dict[str, Any],
        status: str,
        *,
        error: str | None = None,
        container: dict[str, Any] | None = None,
    ) -> None:
        self.report_seq += 1
        body = {
            "status": status,
            "lease_token": task["lease_token"],
            "seq": self.report_seq,
            "error": error,
            "container": container,
            "container_id": container["id"] if container else None,
        }
        try:
            self.cp.post(f"/api/agents/{self.node_id}/tasks/{task['id']}", body)
        except APIError as exc:
            # A stale lease: the task was handed out again and will be run again.
            log.warning("task %s: report refused: %s", task["id"], exc.message)
        except CPUnreachable as exc:
            log.warning(
                "task %s: report lost (%s); the task will be retried", task["id"], exc.message
            )

    # -- the whole agent -------------------------------------------------------

    def run(self) -> None:
        self.register()
        beats = threading.Thread(target=self.heartbeat_loop, daemon=True, name="heartbeat")
        beats.start()
        self.task_loop()
        beats.join(timeout=2)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--cp",
    "cp_url",
    envvar="DOCKLET_CP",
    default=defaults.CP_URL,
    show_default=True,
    help="The control plane's URL.",
)
@click.option(
    "--name",
    envvar="DOCKLET_NODE_NAME",
    default=None,
    help="Node name. Default: the Docker host's name.",
)
@click.option(
    "--heartbeat-interval",
    envvar="DOCKLET_HEARTBEAT_INTERVAL",
    type=float,
    default=None,
    help="Seconds between heartbeats. Default: what the CP says.",
)
@click.option(
    "--log-level",
    envvar="DOCKLET_LOG_LEVEL",
    default="INFO",
    show_default=True,
    help="DEBUG, INFO, WARNING or ERROR.",
)
@click.version_option(__version__, prog_name="docklet-agent")
def main(cp_url: str, name: str | None, heartbeat_interval: float | None, log_level: str) -> None:
    """Run the Docklet agent on this Docker host.

    Example: DOCKLET_CP=http://cp.example:8080 docklet-agent
    """
    logs.setup(log_level)
    agent = Agent(cp_url, name=name, heartbeat_interval=heartbeat_interval)

    def shutdown(*_: object) -> None:
        agent.stop.set()
        if not agent.busy:  # waiting in a long poll: leave now rather than when it ends
            raise SystemExit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, shutdown)
    log.info("agent %s starting; control plane %s", __version__, cp_url)
    agent.run()
    log.info("agent stopped")
