"""Nodes: registration, tokens, heartbeats and liveness."""

from __future__ import annotations

import time
from typing import Any

import pytest

from docklet.common.errors import Unauthorized
from docklet.common.status import TaskKind
from docklet.cp.reconcile import scheduler
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.store import nodes, tasks
from docklet.wire.protocol import Heartbeat, Registration, TaskReport, parse


def register_node(cp: ControlPlane, name: str, engine_id: str | None = None) -> tuple[str, str]:
    reg = Registration(engine_id=engine_id or f"engine-{name}", name=name, info={"os": "linux"})
    reply = cp.agents.register(reg, join_token=cp.tokens.join_token())
    return reply["node_id"], reply["token"]


def heartbeat(cp: ControlPlane, node_id: str, **body: Any) -> None:
    cp.agents.heartbeat(node_id, parse(Heartbeat, body))


def container(cid: str, slot: int = 1, state: str = "running") -> dict[str, Any]:
    return {
        "id": cid,
        "name": f"docklet.web.{slot}",
        "image": "nginx:1.25",
        "state": state,
        "health": None,
        "exit_code": None if state == "running" else 0,
        "restarts": 0,
        "labels": {
            "docklet.cluster": "test",
            "docklet.app": "web",
            "docklet.slot": str(slot),
            "docklet.revision": "1",
            "docklet.spec-hash": "abc123",
        },
    }


def container_ids(cp: ControlPlane, node_id: str) -> list[str]:
    rows = cp.store.query(
        "SELECT container_id FROM containers WHERE node_id = ? ORDER BY container_id", (node_id,)
    )
    return [r["container_id"] for r in rows]


def node_row(cp: ControlPlane, node_id: str) -> dict[str, Any]:
    row = cp.store.one("SELECT * FROM nodes WHERE node_id = ?", (node_id,))
    assert row is not None
    return row


def test_reregistering_an_engine_keeps_the_node_and_replaces_the_token(
    cp: ControlPlane,
) -> None:
    node, first = register_node(cp, "n1")
    again, second = register_node(cp, "n1")
    assert again == node == "n1"
    assert second != first
    nodes.authenticate(cp.store, node, second)
    with pytest.raises(Unauthorized):
        nodes.authenticate(cp.store, node, first)


def test_second_engine_with_the_same_name_gets_a_suffix(cp: ControlPlane) -> None:
    assert register_node(cp, "n1", "engine-a")[0] == "n1"
    assert register_node(cp, "n1", "engine-b")[0] == "n1-2"
    assert register_node(cp, "n1", "engine-c")[0] == "n1-3"
    assert register_node(cp, "n1", "engine-a")[0] == "n1"


def test_tokens_are_stored_only_as_hashes(cp: ControlPlane) -> None:
    _, old = register_node(cp, "n1")
    _, token = register_node(cp, "n1")
    stored = b"".join(p.read_bytes() for p in cp.config.data_dir.glob("docklet.db*"))
    assert nodes.hash_token(token).encode() in stored  # these are the right files
    assert token.encode() not in stored
    assert old.encode() not in stored


def test_heartbeat_updates_last_seen_and_replaces_the_snapshot(cp: ControlPlane) -> None:
    node, _ = register_node(cp, "n1")
    with cp.store.write() as db:
        db.execute("UPDATE nodes SET last_seen = ?", (time.time() - 600,))
    heartbeat(cp, node, containers=[container("c1", 1), container("c2", 2)])
    assert time.time() - node_row(cp, node)["last_seen"] < 5
    assert container_ids(cp, node) == ["c1", "c2"]

    heartbeat(cp, node, containers=[container("c2", 2), container("c3", 3)])
    assert container_ids(cp, node) == ["c2", "c3"]
    heartbeat(cp, node, containers=[])
    assert container_ids(cp, node) == []


def test_heartbeat_without_docker_keeps_the_containers(cp: ControlPlane) -> None:
    node, _ = register_node(cp, "n1")
    heartbeat(cp, node, containers=[container("c1")])
    heartbeat(cp, node, docker_ok=False, docker_error="engine not answering", containers=[])
    assert container_ids(cp, node) == ["c1"]
    row = node_row(cp, node)
    assert (row["docker_ok"], row["docker_error"]) == (0, "engine not answering")


def test_heartbeat_older_than_the_latest_report_keeps_the_containers(cp: ControlPlane) -> None:
    node, token = register_node(cp, "n1")
    with cp.store.write() as db:
        task_id = tasks.create(
            db, node_id=node, app="web", kind=TaskKind.DEPLOY, container="docklet.web.1", slot=1
        )
    (leased,) = cp.agents.lease_tasks(node, token, 0)
    body = {"status": "done", "lease_token": leased["lease_token"], "seq": 5}
    cp.agents.report(node, task_id, parse(TaskReport, {**body, "container": container("new")}))

    heartbeat(cp, node, report_seq=4, containers=[])  # listed before the deploy finished
    assert container_ids(cp, node) == ["new"]
    heartbeat(cp, node, report_seq=5, containers=[])
    assert container_ids(cp, node) == []


def test_liveness_goes_unknown_then_offline_and_back_online(cp: ControlPlane) -> None:
    node, _ = register_node(cp, "n1")
    seen = node_row(cp, node)["last_seen"]
    config = cp.config

    scheduler.reconcile(cp.store, config, now=seen + config.unknown_seconds - 0.1)
    assert node_row(cp, node)["status"] == "online"
    scheduler.reconcile(cp.store, config, now=seen + config.unknown_seconds + 0.1)
    assert node_row(cp, node)["status"] == "unknown"
    scheduler.reconcile(cp.store, config, now=seen + config.offline_seconds + 0.1)
    assert node_row(cp, node)["status"] == "offline"
    heartbeat(cp, node, containers=[])
    assert node_row(cp, node)["status"] == "online"

    events = cp.store.query("SELECT kind FROM events WHERE node_id = ? ORDER BY id", (node,))
    assert [e["kind"] for e in events] == [
        "node_registered",
        "node_unknown",
        "node_offline",
        "node_online",
    ]


def test_a_task_report_or_poll_keeps_a_node_online_as_a_heartbeat_does(cp: ControlPlane) -> None:
    from test_tasks import queue_deploy

    cp.config = type(cp.config)(**{**dict(cp.config), "heartbeat_interval": 0.2})
    node, token = register_node(cp, "n1")
    task_id = queue_deploy(cp, node)
    (leased,) = cp.agents.lease_tasks(node, token, 0)
    time.sleep(cp.config.unknown_seconds + 0.1)  # no heartbeat: it would be unknown now...
    cp.agents.report(node, task_id, TaskReport(status="running", lease_token=leased["lease_token"]))
    cp.passes.reconcile()
    assert node_row(cp, node)["status"] == "online"  # ...but its agent just reported
    time.sleep(cp.config.unknown_seconds + 0.1)
    cp.agents.poll_tasks(node, token, 0)
    cp.passes.reconcile()
    assert node_row(cp, node)["status"] == "online"
    time.sleep(cp.config.unknown_seconds + 0.1)
    cp.passes.reconcile()
    assert node_row(cp, node)["status"] == "unknown"  # silent: no heartbeat, no report
