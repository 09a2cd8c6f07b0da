"""Tasks: leases, reports, expiry and what an agent restart does to them."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import WSGIClient

from docklet.common import defaults
from docklet.common.errors import StaleLease, Unauthorized
from docklet.common.status import TaskKind
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.store import tasks
from docklet.wire.protocol import Registration, TaskReport, parse


def register_node(cp: ControlPlane, name: str) -> tuple[str, str]:
    reply = cp.agents.register(
        Registration(engine_id=f"engine-{name}", name=name), join_token=cp.tokens.join_token()
    )
    return reply["node_id"], reply["token"]


def queue_deploy(cp: ControlPlane, node_id: str, slot: int = 1) -> int:
    with cp.store.write() as db:
        return tasks.create(
            db,
            node_id=node_id,
            app="web",
            kind=TaskKind.DEPLOY,
            container=f"docklet.web.{slot}",
            slot=slot,
            revision=1,
            payload={"image": "nginx:1.25", "container_hash": "abc123"},
        )


def report(cp: ControlPlane, node_id: str, task_id: int, **body: Any) -> dict[str, Any]:
    return cp.agents.report(node_id, task_id, parse(TaskReport, body))


def expire(cp: ControlPlane) -> None:
    """Let every lease run out."""
    with cp.store.write() as db:
        tasks.expire_leases(db, time.time() + cp.config.task_lease + 1, 3)


def task_row(cp: ControlPlane, task_id: int) -> dict[str, Any]:
    row = cp.store.one("SELECT * FROM tasks WHERE id = ?", (task_id,))
    assert row is not None
    return row


def running_container(task_id: int, container_id: str = "c0ffee") -> dict[str, Any]:
    return {
        "id": container_id,
        "name": "docklet.web.1",
        "image": "nginx:1.25",
        "state": "running",
        "health": None,
        "exit_code": None,
        "restarts": 0,
        "labels": {
            "docklet.app": "web",
            "docklet.slot": "1",
            "docklet.revision": "1",
            "docklet.spec-hash": "abc123",
            "docklet.task": str(task_id),
        },
    }


def test_lease_hands_out_a_token_and_marks_the_task_running(cp: ControlPlane) -> None:
    node, token = register_node(cp, "n1")
    task_id = queue_deploy(cp, node)
    (leased,) = cp.agents.lease_tasks(node, token, 0)
    assert leased["id"] == task_id
    assert leased["lease_token"]
    assert leased["payload"]["image"] == "nginx:1.25"
    row = task_row(cp, task_id)
    assert (row["status"], row["lease_token"]) == ("running", leased["lease_token"])
    assert cp.agents.lease_tasks(node, token, 0) == []  # not handed out twice


def test_report_with_a_wrong_or_old_lease_token_is_refused(
    cp: ControlPlane, api: WSGIClient
) -> None:
    node, token = register_node(cp, "n1")
    task_id = queue_deploy(cp, node)
    (first,) = cp.agents.lease_tasks(node, token, 0)
    expire(cp)
    (second,) = cp.agents.lease_tasks(node, token, 0)
    auth = {"Authorization": f"Bearer {token}"}
    path = f"/api/agents/{node}/tasks/{task_id}"

    for stale in (first["lease_token"], "not-a-lease"):
        status, body = api.post(path, {"status": "done", "lease_token": stale}, headers=auth)
        assert (status, body["error"]["code"]) == (409, "stale_lease")
    assert task_row(cp, task_id)["status"] == "running"
    with pytest.raises(StaleLease):
        report(cp, node, task_id, status="done", lease_token=first["lease_token"])
    assert report(cp, node, task_id, status="done", lease_token=second["lease_token"]) == {
        "status": "done"
    }


def test_report_through_another_nodes_path_is_not_found(cp: ControlPlane, api: WSGIClient) -> None:
    node, token = register_node(cp, "n1")
    other, other_token = register_node(cp, "n2")
    task_id = queue_deploy(cp, node)
    (leased,) = cp.agents.lease_tasks(node, token, 0)
    status, body = api.post(
        f"/api/agents/{other}/tasks/{task_id}",
        {"status": "done", "lease_token": leased["lease_token"]},
        headers={"Authorization": f"Bearer {other_token}"},
    )
    assert (status, body["error"]["code"]) == (404, "not_found")
    assert task_row(cp, task_id)["status"] == "running"


def test_done_report_records_the_container(cp: ControlPlane) -> None:
    node, token = register_node(cp, "n1")
    task_id = queue_deploy(cp, node)
    (leased,) = cp.agents.lease_tasks(node, token, 0)
    report(
        cp,
        node,
        task_id,
        status="done",
        lease_token=leased["lease_token"],
        container_id="c0ffee",
        container=running_container(task_id),
    )
    row = task_row(cp, task_id)
    assert (row["status"], row["container_id"], row["lease_token"]) == ("done", "c0ffee", None)
    (container,) = cp.store.query("SELECT * FROM containers WHERE node_id = ?", (node,))
    assert (container["container_id"], container["app"], container["slot"]) == ("c0ffee", "web", 1)
    assert (container["state"], container["container_hash"]) == ("running", "abc123")


def test_expired_lease_is_handed_out_again(cp: ControlPlane) -> None:
    node, token = register_node(cp, "n1")
    task_id = queue_deploy(cp, node)
    (first,) = cp.agents.lease_tasks(node, token, 0)
    expire(cp)
    assert task_row(cp, task_id)["status"] == "pending"
    (second,) = cp.agents.lease_tasks(node, token, 0)
    assert second["id"] == task_id
    assert second["lease_token"] != first["lease_token"]


def test_task_fails_readably_after_max_attempts_expiries(cp: ControlPlane) -> None:
    node, token = register_node(cp, "n1")
    task_id = queue_deploy(cp, node)
    for _ in range(defaults.TASK_MAX_ATTEMPTS):
        assert [t["id"] for t in cp.agents.lease_tasks(node, token, 0)] == [task_id]
        expire(cp)
    row = task_row(cp, task_id)
    assert row["status"] == "failed"
    assert row["error"] == f"no report from node n1 after {defaults.TASK_MAX_ATTEMPTS} leases"
    assert cp.agents.lease_tasks(node, token, 0) == []


def test_agent_restart_returns_leased_tasks_to_pending(cp: ControlPlane) -> None:
    node, token = register_node(cp, "n1")
    task_id = queue_deploy(cp, node)
    cp.agents.lease_tasks(node, token, 0)
    _, new_token = register_node(cp, "n1")
    row = task_row(cp, task_id)
    assert (row["status"], row["lease_token"]) == ("pending", None)
    assert [t["id"] for t in cp.agents.lease_tasks(node, new_token, 0)] == [task_id]


def test_replaced_agent_cannot_lease(cp: ControlPlane) -> None:
    node, old_token = register_node(cp, "n1")
    queue_deploy(cp, node)
    register_node(cp, "n1")  # a new agent on the same engine
    with pytest.raises(Unauthorized, match="replaced"):
        cp.agents.lease_tasks(node, old_token, 0)
    assert cp.store.one("SELECT status FROM tasks")["status"] == "pending"


def test_running_report_extends_the_lease(cp: ControlPlane) -> None:
    node, token = register_node(cp, "n1")
    task_id = queue_deploy(cp, node)
    (leased,) = cp.agents.lease_tasks(node, token, 0)
    soon = time.time() + 1
    with cp.store.write() as db:  # the lease is about to run out
        db.execute("UPDATE tasks SET lease_expires = ? WHERE id = ?", (soon, task_id))

    report(cp, node, task_id, status="running", lease_token=leased["lease_token"])
    assert task_row(cp, task_id)["lease_expires"] > soon + cp.config.task_lease / 2
    with cp.store.write() as db:
        tasks.expire_leases(db, soon + 1, 3)
    assert task_row(cp, task_id)["status"] == "running"


def test_pruning_keeps_the_newest_task_of_each_container_and_is_bounded(
    cp: ControlPlane, monkeypatch: Any
) -> None:
    node, token = register_node(cp, "n1")
    for _ in range(3):  # three finished deploys of slot 1, one of slot 2
        task_id = queue_deploy(cp, node)
        (leased,) = cp.agents.lease_tasks(node, token, 0)
        report(cp, node, task_id, status="done", lease_token=leased["lease_token"])
    task_id = queue_deploy(cp, node, slot=2)
    (leased,) = cp.agents.lease_tasks(node, token, 0)
    report(cp, node, task_id, status="done", lease_token=leased["lease_token"])
    ids = [r["id"] for r in cp.store.query("SELECT id FROM tasks ORDER BY id")]
    with cp.store.write() as db:
        assert tasks.prune(db, before=0) == 0  # nothing finished before then
    monkeypatch.setattr(tasks, "PRUNE_BATCH", 1)
    with cp.store.write() as db:
        assert tasks.prune(db, before=time.time() + 1) == 1  # one at a time, at most
    with cp.store.write() as db:
        assert tasks.prune(db, before=time.time() + 1) == 1
        assert tasks.prune(db, before=time.time() + 1) == 0
    left = [r["id"] for r in cp.store.query("SELECT id FROM tasks ORDER BY id")]
    assert left == [ids[2], ids[3]]  # the newest of each container stays: the scheduler reads it
