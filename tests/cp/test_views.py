"""The app view builder: given the rows read, the exact dict `GET /api/state/apps` answers."""

from __future__ import annotations

import copy
import json
from typing import Any

from docklet.cp.service.appview import AppRows, app_view

APP = {
    "name": "web",
    "desired": "running",
    "current_revision": 2,
    "target_revision": 2,
    "last_error": None,
    "updated_at": 10.0,
}


def revision(number: int, container_hash: str, status: str = "stable", **spec: Any) -> dict:
    return {
        "number": number,
        "spec": json.dumps({"name": "web", "image": f"nginx:1.{number}", "replicas": 2, **spec}),
        "container_hash": container_hash,
        "status": status,
        "reason": None,
    }


def container(slot: int, node_id: str, state: str, container_hash: str) -> dict:
    return {
        "app": "web",
        "slot": slot,
        "node_id": node_id,
        "container_id": f"c{slot}",
        "name": f"docklet.web.{slot}.{container_hash}",
        "state": state,
        "health": None,
        "exit_code": None,
        "revision": 2,
        "container_hash": container_hash,
        "image": "nginx:1.2",
    }


def steady_rows() -> AppRows:
    """v2 on two slots; n2 stopped reporting; slot 2's latest deploy of v2 failed."""
    rows = AppRows()
    rows.revisions[("web", 2)] = revision(2, "h2")
    rows.containers["web"] = [
        container(1, "n1", "running", "h2"),
        container(2, "n2", "running", "h2"),
    ]
    rows.failures["web"] = [
        {
            "task_id": 3,
            "revision": 1,
            "slot": 1,
            "node_id": "n1",
            "error": "old",
            "finished_at": 1.0,
        },
        {
            "task_id": 7,
            "revision": 2,
            "slot": 2,
            "node_id": "n2",
            "error": "no pull",
            "finished_at": 5.0,
        },
    ]
    rows.placements["web"] = ["n1", "n2"]
    return rows


def test_a_degraded_app_with_a_failed_slot_on_a_silent_node() -> None:
    rows = steady_rows()
    before = copy.deepcopy(rows)
    view = app_view(APP, rows, {"n1": "online", "n2": "unknown"})
    assert view == {
        "name": "web",
        "desired": "running",
        "actual": "degraded",
        "status": "failed",
        "revision": "v2",
        "running_revision": "v2",
        "target_revision": "v2",
        "held": None,
        "rollout": None,
        "image": "nginx:1.2",
        "replicas": 2,
        "running": 1,
        "nodes": ["n1"],
        "instances": [
            {
                "slot": 1,
                "node_id": "n1",
                "container_id": "c1",
                "container": "docklet.web.1.h2",
                "state": "running",
                "reported_state": "running",
                "health": None,
                "exit_code": None,
                "revision": "v2",
                "up_to_date": True,
                "image": "nginx:1.2",
            },
            {
                "slot": 2,
                "node_id": "n2",
                "container_id": "c2",
                "container": "docklet.web.2.h2",
                "state": "unknown",
                "reported_state": "running",
                "health": None,
                "exit_code": None,
                "revision": "v2",
                "up_to_date": True,
                "image": "nginx:1.2",
            },
        ],
        "tasks": [],
        "errors": [
            {"task_id": 7, "slot": 2, "node_id": "n2", "error": "no pull", "finished_at": 5.0}
        ],
        "last_error": None,
        "sync_error": None,
        "updated_at": 10.0,
    }
    assert list(view["errors"][0]) == ["task_id", "slot", "node_id", "error", "finished_at"]
    assert rows == before  # building reads the rows, never changes them


def test_a_rolling_update_shows_its_target_and_hides_the_old_failures_in_brief() -> None:
    rows = steady_rows()
    rows.revisions[("web", 3)] = revision(3, "h3", status="canary")
    rows.containers["web"].append(container(1, "n1", "running", "h3"))
    rows.tasks["web"] = [
        {"id": 9, "kind": "deploy", "slot": 2, "node_id": "n1", "status": "pending"}
    ]
    rows.rollouts["web"] = {
        "id": 4,
        "app": "web",
        "revision": 3,
        "from_revision": 2,
        "status": "canary",
        "canary_node": "n1",
        "canary_slot": 1,
        "done": 0,
        "total": 2,
        "deadline": 100.0,
        "progress_deadline": 200.0,
        "reason": None,
        "failed_phase": None,
        "evidence": "{}",
        "created_at": 9.0,
        "updated_at": 9.5,
        "finished_at": None,
    }
    rows.sync_errors["web"] = "apps/web.yaml: replicas: not a number"
    app = {**APP, "target_revision": 3}
    view = app_view(app, rows, {"n1": "online", "n2": "online"}, brief=True)
    rollout = view.pop("rollout")
    assert rollout["id"] == 4 and rollout["status"] == "canary" and not rollout["terminal"]
    assert view == {
        "name": "web",
        "desired": "running",
        "actual": "running",
        "status": "rolling_update",
        "revision": "v3",
        "running_revision": "v2",
        "target_revision": "v3",
        "held": None,
        "image": "nginx:1.2",
        "replicas": 2,
        "running": 3,
        "nodes": ["n1", "n2"],
        "errors": [],
        "last_error": None,
        "sync_error": "apps/web.yaml: replicas: not a number",
        "updated_at": 10.0,
    }


def test_a_held_first_revision_says_why_and_nothing_runs() -> None:
    rows = AppRows()
    rows.revisions[("web", 1)] = {**revision(1, "h1", status="held"), "reason": "failed twice"}
    app = {**APP, "current_revision": None, "target_revision": 1}
    view = app_view(app, rows, {}, brief=True)
    assert (view["held"], view["actual"], view["status"]) == ("failed twice", "stopped", "stable")
    assert (view["revision"], view["running_revision"], view["target_revision"]) == (
        None,
        None,
        "v1",
    )
    assert (view["image"], view["replicas"], view["nodes"]) == (None, 0, [])
