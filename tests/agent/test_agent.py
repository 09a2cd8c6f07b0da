"""The agent against a real CP over HTTP and the real Docker engine, and when either fails."""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN_TOKEN, wait_for
from test_engine import IGNORE_TERM, slow_stop_image

from docklet.agent.engine import Engine, Outcome
from docklet.agent.loop import Agent
from docklet.agent.pool import Held
from docklet.agent.settings import AgentConfig
from docklet.common.status import TaskKind
from docklet.cp.store import tasks
from docklet.wire.client import Client
from docklet.wire.protocol import LeasedTask

DEAD_DOCKER = "unix:///tmp/docklet-no-such-docker.sock"


@pytest.fixture(scope="module")
def slow_image(docker_client: Any, web_image: str) -> Iterator[str]:
    with slow_stop_image(docker_client, web_image) as tag:
        yield tag


def make_agent(url: str, docker_client: Any, **settings: Any) -> Agent:
    state = Path(os.environ["DOCKLET_STATE_DIR"])  # never the host's /var/lib/docklet-agent
    settings = {"state_dir": state, **settings}
    config = AgentConfig(cp=url, node_name="node-a", poll_wait=1, retry_max=1, **settings)
    return Agent(config, engine=Engine(docker_client))


@pytest.fixture
def agent(served_cp: str, cp: Any, docker_client: Any) -> Iterator[Agent]:
    # The cluster is claimed (conftest's admin token): joining needs the join token.
    a = make_agent(served_cp, docker_client, join_token=cp.tokens.join_token())
    a.register()
    yield a
    a.stop.set()
    a.drain(timeout=30)
    for c in docker_client.containers.list(
        ignore_removed=True, all=True, filters={"label": f"docklet.cluster={a.cluster_id}"}
    ):
        c.remove(force=True)


@pytest.fixture
def polling(agent: Agent) -> Iterator[Agent]:
    """The agent with its task loop running, as in production."""
    thread = threading.Thread(target=agent.task_loop, daemon=True)
    thread.start()
    yield agent
    agent.stop.set()
    thread.join(timeout=10)


def app_state(url: str, name: str) -> dict[str, Any]:
    return Client(url, token=ADMIN_TOKEN).get(f"/api/apps/{name}")


def running(url: str, name: str) -> bool:
    return app_state(url, name)["actual"] == "running"


@pytest.mark.docker
def test_a_deploy_runs_and_the_heartbeat_reports_it(
    agent: Agent, served_cp: str, web_image: str
) -> None:
    Client(served_cp, token=ADMIN_TOKEN).post("/api/apps", {"name": "web", "image": web_image})
    assert agent.poll_once() == 1
    assert agent.drain(timeout=30)
    agent.heartbeat_once()
    app = app_state(served_cp, "web")
    assert app["actual"] == "running"
    assert app["instances"][0]["node_id"] == "node-a"


@pytest.mark.docker
def test_docker_going_away_is_not_reported_as_no_containers(
    agent: Agent, served_cp: str, web_image: str
) -> None:
    Client(served_cp, token=ADMIN_TOKEN).post("/api/apps", {"name": "web", "image": web_image})
    agent.poll_once()
    agent.drain(timeout=30)
    agent.heartbeat_once()
    real = agent.engine
    agent.engine = Engine(url=DEAD_DOCKER)

    agent.heartbeat_once()
    (node,) = Client(served_cp, token=ADMIN_TOKEN).get("/api/state/nodes")
    # What a person can act on, not the SDK's exception text.
    assert node["docker_ok"] is False
    assert node["docker_error"] == f"Docker engine not answering at {DEAD_DOCKER}"
    app = app_state(served_cp, "web")
    assert len(app["instances"]) == 1  # what Docker last said is kept...
    assert app["instances"][0]["reported_state"] == "running"
    assert app["actual"] == "unknown"  # ...but not passed off as what runs now

    # The engine comes back: the agent carries on with no restart.
    agent.engine = real
    agent.heartbeat_once()
    (node,) = Client(served_cp, token=ADMIN_TOKEN).get("/api/state/nodes")
    assert node["docker_ok"] is True
    assert app_state(served_cp, "web")["actual"] == "running"


@pytest.mark.docker
def test_a_task_is_not_failed_because_docker_is_down(
    agent: Agent, served_cp: str, web_image: str, caplog: pytest.LogCaptureFixture
) -> None:
    real = agent.engine
    agent.engine = Engine(url=DEAD_DOCKER)
    Client(served_cp, token=ADMIN_TOKEN).post("/api/apps", {"name": "web", "image": web_image})
    caplog.set_level(logging.WARNING)
    agent.task_loop(max_iterations=1)  # logs, backs off, does not raise
    assert f"Docker engine not answering at {DEAD_DOCKER}" in caplog.text
    assert "FileNotFoundError" in caplog.text  # the raw detail is for the log
    app = app_state(served_cp, "web")
    assert app["errors"] == [] and app["actual"] == "pending"
    # Restarting the agent (re-registering) with Docker back runs the same task.
    agent.engine = real
    agent.register()
    assert agent.poll_once() == 1
    assert agent.drain(timeout=30)
    assert running(served_cp, "web")


def test_an_unreachable_control_plane_is_retried_not_fatal(
    caplog: pytest.LogCaptureFixture, docker_client: Any
) -> None:
    agent = make_agent("http://127.0.0.1:9", docker_client)
    caplog.set_level(logging.WARNING)
    thread = threading.Thread(target=agent.register)
    thread.start()
    wait_for(lambda: "retrying" in caplog.text, 10, "a retry to be logged")
    agent.stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert "cannot reach the control plane" in caplog.text


@pytest.fixture
def odd_cp() -> Iterator[tuple[str, list[str]]]:
    """A server that registers no agent (a reply Docklet never sends) and leases nothing.

    Yields its URL and the paths of the task polls it was sent.
    """
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"tasks": []}')

        def do_POST(self) -> None:
            body = json.dumps({"node_id": "", "token": "t", "heartbeat_interval": "often"})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", paths
    server.shutdown()
    server.server_close()


@pytest.mark.docker
def test_an_answer_the_agent_cannot_use_is_one_clear_error_and_a_retry(
    odd_cp: Any, docker_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    agent = make_agent(odd_cp[0], docker_client)
    caplog.set_level(logging.WARNING)
    thread = threading.Thread(target=agent.register)
    thread.start()
    wait_for(lambda: len(caplog.records) >= 2, 10, "two attempts")
    agent.stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive() and agent.node_id == ""
    record = caplog.records[0]
    assert record.levelno == logging.ERROR and record.exc_info is None
    assert "answer this agent cannot use" in record.message
    assert "node_id" in record.message and "heartbeat_interval" in record.message


@pytest.mark.docker
def test_a_leased_task_of_an_unknown_kind_fails_at_once(agent: Agent, cp: Any) -> None:
    with cp.store.write() as db:
        task_id = tasks.create(
            db, node_id="node-a", app="web", kind="migrate", container="docklet.web.1"
        )
    assert agent.poll_once() == 0
    row = cp.store.one("SELECT status, error FROM tasks WHERE id = ?", (task_id,))
    assert row["status"] == "failed"  # not left to expire, lease after lease
    assert "cannot run this task" in row["error"] and "kind" in row["error"]


@pytest.mark.docker
def test_a_slow_stop_does_not_delay_another_apps_deploy(
    polling: Agent, served_cp: str, web_image: str, slow_image: str, docker_client: Any
) -> None:
    client = Client(served_cp, token=ADMIN_TOKEN)
    client.post(
        "/api/apps",
        {"name": "slow", "image": slow_image, "command": IGNORE_TERM, "stop_grace_period": "15s"},
    )
    wait_for(lambda: running(served_cp, "slow"), 30, "slow to run")
    client.delete("/api/apps/slow")  # its process ignores SIGTERM: 15s to remove
    wait_for(lambda: polling.report_seq == 1 and _stopping(polling), 10, "the removal to start")

    started = time.monotonic()
    client.post("/api/apps", {"name": "fast", "image": web_image})
    wait_for(lambda: running(served_cp, "fast"), 10, "fast to run")
    assert time.monotonic() - started < 5
    slow = docker_client.containers.list(
        ignore_removed=True, all=True, filters={"label": "docklet.app=slow"}
    )
    assert slow, "the removal should still be waiting out its grace period"


def _stopping(agent: Agent) -> bool:
    pool = agent._pool
    with pool._lock:
        return any(h.running and h.task.kind == TaskKind.REMOVE for h in pool._held.values())


class Recording(Engine):
    """The real engine, noting when each task's Docker work began and ended."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.spans: list[tuple[str, int, float, float]] = []
        self._mutex = threading.Lock()

    def _timed(self, task: LeasedTask, work: Any) -> Any:
        began = time.monotonic()
        try:
            return work()
        finally:
            with self._mutex:
                self.spans.append((task.container, task.id, began, time.monotonic()))

    def deploy(self, task: LeasedTask, node_id: str, cluster_id: str) -> Outcome:
        return self._timed(task, lambda: super(Recording, self).deploy(task, node_id, cluster_id))

    def remove(self, task: LeasedTask, cluster_id: str) -> None:
        return self._timed(task, lambda: super(Recording, self).remove(task, cluster_id))


@pytest.mark.docker
def test_tasks_of_one_container_run_in_lease_order_never_at_once(
    agent: Agent, cp: Any, slow_image: str, web_image: str, docker_client: Any
) -> None:
    engine = agent.engine = Recording(docker_client)
    cp.config = cp.config.model_copy(update={"task_lease": 5})  # renewed every 1.7s

    def spec(image: str, version: str) -> dict[str, Any]:
        return {
            "image": image,
            "container_hash": version,
            "command": IGNORE_TERM,
            "stop_grace_period": "3s",
            "pull": "never",
        }

    # Made directly in the CP's queue: its scheduler never has two open tasks
    # for one container, but a re-lease or a newer CP may.
    with cp.store.write() as db:
        ids = [
            tasks.create(db, node_id="node-a", app="x", kind=kind, container=name, payload=load)
            for kind, name, load in [
                (TaskKind.DEPLOY, "docklet.x.1", spec(slow_image, "v1")),
                (TaskKind.DEPLOY, "docklet.x.1", spec(slow_image, "v2")),  # replaces: 3s stop
                (TaskKind.DEPLOY, "docklet.y.1", spec(web_image, "v1")),
                (TaskKind.REMOVE, "docklet.x.1", None),  # 3s stop again
            ]
        ]
    assert agent.poll_once() == 4
    assert agent.drain(timeout=60)

    rows = {r["id"]: r for r in cp.store.query("SELECT * FROM tasks")}
    assert [(rows[i]["status"], rows[i]["attempts"]) for i in ids] == [("done", 1)] * 4
    x = sorted((s for s in engine.spans if s[0] == "docklet.x.1"), key=lambda s: s[2])
    assert [s[1] for s in x] == [ids[0], ids[1], ids[3]]  # lease order
    assert all(a[3] <= b[2] for a, b in itertools.pairwise(x))  # one at a time
    (y,) = (s for s in engine.spans if s[0] == "docklet.y.1")
    assert y[3] < x[1][3]  # the other container did not wait for the slow replace
    assert not docker_client.containers.list(
        ignore_removed=True, all=True, filters={"name": "docklet.x.1"}
    )


@pytest.mark.docker
def test_stopping_lets_running_tasks_finish_and_starts_no_queued_one(
    agent: Agent, cp: Any, slow_image: str, docker_client: Any
) -> None:
    load = {
        "image": slow_image,
        "container_hash": "v1",
        "command": IGNORE_TERM,
        "stop_grace_period": "3s",
        "pull": "never",
    }
    with cp.store.write() as db:
        first, remove, redeploy = (
            tasks.create(db, node_id="node-a", app="x", kind=kind, container="docklet.x.1", **kw)
            for kind, kw in [
                ("deploy", {"payload": load}),
                ("remove", {}),
                ("deploy", {"payload": load}),
            ]
        )
    assert agent.poll_once() == 3
    wait_for(lambda: _stopping(agent), 10, "the removal to start")
    agent.stop.set()  # what SIGTERM does
    assert agent.drain(timeout=30)
    status = {r["id"]: r["status"] for r in cp.store.query("SELECT id, status FROM tasks")}
    assert status == {first: "done", remove: "done", redeploy: "running"}  # leased, not run
    assert not docker_client.containers.list(
        ignore_removed=True, all=True, filters={"name": "docklet.x.1"}
    )


def test_the_agent_asks_only_for_what_it_has_room_for(odd_cp: Any, docker_client: Any) -> None:
    url, paths = odd_cp
    agent = make_agent(url, docker_client, concurrency=3)
    agent.node_id = "node-a"
    assert agent.poll_once() == 0
    queued = LeasedTask(
        id=7, kind=TaskKind.STOP, app="x", container="c", lease_token="t", lease_seconds=60
    )
    pool = agent._pool
    with pool._lock:  # held, say waiting behind another task of its container
        pool._held[queued.id] = Held(queued, renew_at=time.monotonic() + 60)
    assert agent.poll_once() == 0
    assert paths == [
        "/api/agents/node-a/tasks?wait=1&max=3",
        "/api/agents/node-a/tasks?wait=1&max=2",
    ]
    with pool._lock:
        for n in range(8, 10):
            pool._held[n] = Held(queued, renew_at=time.monotonic() + 60)
    assert agent.poll_once() == 0 and len(paths) == 2  # no room: not even asked
    agent.stop.set()
    with pool._lock:  # nothing real to renew
        pool._held.clear()


@pytest.mark.docker
def test_an_agent_whose_token_was_replaced_registers_again_after_a_pause(
    agent: Agent, served_cp: str, cp: Any, docker_client: Any
) -> None:
    # Replaced by a registration of its own that an overloaded CP finished after the agent
    # gave up on it, or by another agent on the engine: either way it never stops for good.
    newer = make_agent(served_cp, docker_client, join_token=cp.tokens.join_token())
    newer.register()  # same Docker engine: same node, and the old token is void
    agent.config = agent.config.model_copy(update={"join_token": cp.tokens.join_token()})
    generation = agent._generation
    started = time.monotonic()
    agent.heartbeat_loop(max_iterations=1)
    assert not agent.stop.is_set()
    assert agent._generation == generation + 1
    assert time.monotonic() - started >= 0.5  # a jittered backoff first: no quick tug of war
    agent.heartbeat_once()  # its new token is good
    assert Client(served_cp, token=ADMIN_TOKEN).get("/api/state/nodes")[0]["status"] == "online"


@pytest.mark.docker
def test_an_agent_forgotten_by_the_cp_registers_again(
    agent: Agent, served_cp: str, cp: Any
) -> None:
    with cp.store.write() as db:  # the CP lost its data, say
        db.execute("DELETE FROM nodes")
    # Its node token means nothing now, and the bootstrap window is spent: it needs the join token.
    agent.config = agent.config.model_copy(update={"join_token": cp.tokens.join_token()})
    agent.heartbeat_loop(max_iterations=1)
    assert not agent.stop.is_set()
    assert [n["node_id"] for n in Client(served_cp, token=ADMIN_TOKEN).get("/api/state/nodes")] == [
        "node-a"
    ]


@pytest.mark.docker
def test_reports_carry_what_a_rollout_judges_by(
    agent: Agent, served_cp: str, web_image: str, docker_client: Any
) -> None:
    sent: list[tuple[str, Any]] = []
    real_post = agent.cp.post

    def post(path: str, body: Any = None, *args: Any, **kwargs: Any) -> Any:
        sent.append((path, body))  # what went over the wire, then on to the real CP
        return real_post(path, body, *args, **kwargs)

    agent.cp.post = post  # type: ignore[method-assign]
    Client(served_cp, token=ADMIN_TOKEN).post("/api/apps", {"name": "web", "image": web_image})
    assert agent.poll_once() == 1
    assert agent.drain(timeout=30)
    agent.heartbeat_once()

    (report,) = (body for path, body in sent if "/tasks/" in path)
    assert report["status"] == "done"
    assert report["image_digest"] == docker_client.images.get(web_image).id
    assert report["container"]["started_at"] > time.time() - 60
    assert report["container"]["restarts"] == 0
    (beat,) = (body for path, body in sent if path.endswith("/heartbeat"))
    (seen,) = beat["containers"]
    assert seen["started_at"] == report["container"]["started_at"]  # young: inspected
    assert running(served_cp, "web")  # and the CP takes both
