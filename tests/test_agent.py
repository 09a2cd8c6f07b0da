"""The agent against a real CP over HTTP and the real Docker engine, and when either fails."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from conftest import wait_for

from docklet.agent import Agent
from docklet.client import Client
from docklet.engine import Engine

DEAD_DOCKER = "unix:///tmp/docklet-no-such-docker.sock"


@pytest.fixture
def agent(served_cp: str, docker_client: Any) -> Iterator[Agent]:
    a = Agent(served_cp, name="node-a", engine=Engine(docker_client), poll_wait=1)
    a.register()
    yield a
    a.stop.set()
    for c in docker_client.containers.list(
        all=True, filters={"label": f"docklet.cluster={a.cluster_id}"}
    ):
        c.remove(force=True)


def app_state(url: str, name: str) -> dict[str, Any]:
    return Client(url).get(f"/api/apps/{name}")


@pytest.mark.docker
def test_a_deploy_runs_and_the_heartbeat_reports_it(
    agent: Agent, served_cp: str, web_image: str
) -> None:
    Client(served_cp).post("/api/apps", {"name": "web", "image": web_image})
    assert agent.poll_once() == 1
    agent.heartbeat_once()
    app = app_state(served_cp, "web")
    assert app["actual"] == "running"
    assert app["instances"][0]["node_id"] == "node-a"


@pytest.mark.docker
def test_docker_going_away_is_not_reported_as_no_containers(
    agent: Agent, served_cp: str, web_image: str, docker_client: Any
) -> None:
    Client(served_cp).post("/api/apps", {"name": "web", "image": web_image})
    agent.poll_once()
    agent.heartbeat_once()
    real = agent.engine._client
    agent.engine._client = docker.DockerClient(base_url=DEAD_DOCKER, version="1.41")

    agent.heartbeat_once()
    (node,) = Client(served_cp).get("/api/state/nodes")
    assert node["docker_ok"] is False and "unreachable" in node["docker_error"]
    app = app_state(served_cp, "web")
    assert len(app["instances"]) == 1  # what Docker last said is kept...
    assert app["instances"][0]["reported_state"] == "running"
    assert app["actual"] == "unknown"  # ...but not passed off as what runs now

    # The engine comes back: the agent carries on with no restart.
    agent.engine._client = real
    agent.heartbeat_once()
    (node,) = Client(served_cp).get("/api/state/nodes")
    assert node["docker_ok"] is True
    assert app_state(served_cp, "web")["actual"] == "running"


@pytest.mark.docker
def test_a_task_is_not_failed_because_docker_is_down(
    agent: Agent, served_cp: str, web_image: str
) -> None:
    real = agent.engine._client
    agent.engine._client = docker.DockerClient(base_url=DEAD_DOCKER, version="1.41")
    Client(served_cp).post("/api/apps", {"name": "web", "image": web_image})
    agent.task_loop(max_iterations=1)  # logs, backs off, does not raise
    app = app_state(served_cp, "web")
    assert app["errors"] == [] and app["actual"] == "pending"
    # Restarting the agent (re-registering) with Docker back runs the same task.
    agent.engine._client = real
    agent.register()
    assert agent.poll_once() == 1
    assert app_state(served_cp, "web")["actual"] == "running"


def test_an_unreachable_control_plane_is_retried_not_fatal(
    caplog: pytest.LogCaptureFixture, docker_client: Any
) -> None:
    agent = Agent("http://127.0.0.1:9", name="lonely", engine=Engine(docker_client))
    caplog.set_level(logging.WARNING)
    thread = threading.Thread(target=agent.register)
    thread.start()
    wait_for(lambda: "retrying" in caplog.text, 10, "a retry to be logged")
    agent.stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert "cannot reach the control plane" in caplog.text


@pytest.mark.docker
def test_an_agent_replaced_on_its_engine_stands_down(
    agent: Agent, served_cp: str, docker_client: Any
) -> None:
    newer = Agent(served_cp, name="node-a", engine=Engine(docker_client), poll_wait=1)
    newer.register()  # same Docker engine: same node, and the old token is void
    agent.heartbeat_loop(max_iterations=1)
    assert agent.stop.is_set()  # no tug of war over the node
    newer.heartbeat_once()
    assert Client(served_cp).get("/api/state/nodes")[0]["status"] == "online"


@pytest.mark.docker
def test_an_agent_forgotten_by_the_cp_registers_again(
    agent: Agent, served_cp: str, cp: Any
) -> None:
    with cp.store.write() as db:  # the CP lost its data, say
        db.execute("DELETE FROM nodes")
    agent.heartbeat_loop(max_iterations=1)
    assert not agent.stop.is_set()
    assert [n["node_id"] for n in Client(served_cp).get("/api/state/nodes")] == ["node-a"]
