"""The REST API, in process: what a CLI user or an agent gets back."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import yaml
from conftest import ADMIN_TOKEN, WSGIClient

from docklet import API_VERSION, __version__
from docklet.common.status import TaskKind
from docklet.cp.http.api import ROUTES, Route
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.store import tasks
from docklet.wire.client import Client


def register(api: WSGIClient, name: str = "n1") -> tuple[str, dict[str, str]]:
    """A node, and the Authorization header its agent sends."""
    status, body = api.post("/api/agents/register", {"engine_id": f"engine-{name}", "name": name})
    assert status == 200, body
    return body["node_id"], {"Authorization": f"Bearer {body['token']}"}


def create(api: WSGIClient, **spec: Any) -> dict[str, Any]:
    status, body = api.post("/api/apps", {"image": "nginx:1.25", "name": "web", **spec})
    assert status == 201, body
    return body


def repo_file(cp: ControlPlane, path: str) -> dict[str, Any] | None:
    head = cp.repo.head()
    files = cp.repo.read(head).files if head else {}
    return yaml.safe_load(files[path]) if path in files else None


def snapshot(cp: ControlPlane) -> tuple[Any, ...]:
    """What a rejected request must leave untouched."""
    return (
        cp.repo.head(),
        cp.store.query("SELECT * FROM apps ORDER BY name"),
        cp.store.query("SELECT * FROM revisions ORDER BY app, number"),
    )


def assert_error(status: int, body: Any, expected: int) -> None:
    assert status == expected, body
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "status"}
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"]["status"] == status


# -- public state ----------------------------------------------------------------


def test_health_and_version(cp: ControlPlane, api: WSGIClient) -> None:
    assert api.get("/api/health") == (200, {"status": "ok"})
    status, answer = api.get("/api/version")
    assert status == 200
    assert answer.pop("bootstrap")["admin"] == {"open": False, "closes_at": None}
    metrics = answer.pop("metrics")
    assert metrics["long_polls"] == 0 and metrics["long_poll_slots"] >= 1
    assert metrics["longest_write_ms"] >= 0 and metrics["overloaded"] == 0
    assert answer == {"version": __version__, "api": API_VERSION, "cluster_id": cp.cluster_id}


# -- apps --------------------------------------------------------------------------


def test_create_commits_the_file_and_queues_a_task(cp: ControlPlane, api: WSGIClient) -> None:
    node, _ = register(api)
    body = create(api, replicas=2)
    assert (body["app"], body["revision"], body["image"]) == ("web", "v1", "nginx:1.25")
    assert body["commit"] == cp.repo.head()
    assert [(t["kind"], t["slot"], t["node_id"]) for t in body["tasks"]] == [
        ("deploy", 1, node),
        ("deploy", 2, node),
    ]
    assert repo_file(cp, "apps/web.yaml") == {"name": "web", "image": "nginx:1.25", "replicas": 2}


def test_bare_image_names_the_app_and_gets_the_latest_tag(
    cp: ControlPlane, api: WSGIClient
) -> None:
    status, body = api.post("/api/apps", {"image": "nginx"})
    assert status == 201, body
    assert (body["app"], body["image"]) == ("nginx", "nginx:latest")
    assert repo_file(cp, "apps/nginx.yaml")["image"] == "nginx:latest"


def test_duplicate_name_is_a_conflict(cp: ControlPlane, api: WSGIClient) -> None:
    create(api)
    before = snapshot(cp)
    status, body = api.post("/api/apps", {"image": "redis:7", "name": "web"})
    assert_error(status, body, 409)
    assert "already exists" in body["error"]["message"]
    assert snapshot(cp) == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/apps/ghost"),
        ("POST", "/api/apps/ghost/stop"),
        ("POST", "/api/apps/ghost/start"),
        ("POST", "/api/apps/ghost/update"),
        ("DELETE", "/api/apps/ghost"),
        ("GET", "/api/apps/ghost/revisions"),
    ],
)
def test_unknown_app_is_not_found(api: WSGIClient, method: str, path: str) -> None:
    create(api)
    status, body = api.request(method, path, {"replicas": 2} if path.endswith("update") else None)
    assert_error(status, body, 404)
    assert "ghost" in body["error"]["message"]


BAD_BODIES = [
    pytest.param(b'{"image": "nginx",', "JSON", id="malformed-json"),
    pytest.param(b'["nginx"]', "JSON object", id="json-array"),
    pytest.param(b'{"image": "nginx", "colour": "red"}', "colour", id="unknown-key"),
    pytest.param(b'{"image": "nginx", "replicas": "three"}', "replicas", id="wrong-type"),
    pytest.param(b'{"image": "Not An/Image!"}', "image", id="invalid-image"),
]


@pytest.mark.parametrize("path", ["/api/apps", "/api/apps/web/update"], ids=["create", "update"])
@pytest.mark.parametrize(("raw", "named"), BAD_BODIES)
def test_a_bad_body_is_400_and_changes_nothing(
    cp: ControlPlane, api: WSGIClient, path: str, raw: bytes, named: str
) -> None:
    create(api)
    before = snapshot(cp)
    status, body = api.post(path, raw=raw)
    assert_error(status, body, 400)
    assert named in body["error"]["message"]
    assert snapshot(cp) == before


def test_stop_writes_the_stopped_state_into_the_file(cp: ControlPlane, api: WSGIClient) -> None:
    create(api)
    status, body = api.post("/api/apps/web/stop")
    assert status == 200, body
    assert body["desired"] == "stopped"
    assert repo_file(cp, "apps/web.yaml")["state"] == "stopped"


def test_delete_removes_the_file(cp: ControlPlane, api: WSGIClient) -> None:
    create(api)
    status, body = api.delete("/api/apps/web")
    assert status == 200, body
    assert body["commit"] == cp.repo.head()
    assert repo_file(cp, "apps/web.yaml") is None


def test_delete_of_a_deployed_app_removes_the_file(cp: ControlPlane, api: WSGIClient) -> None:
    register(api)
    create(api)
    status, body = api.delete("/api/apps/web")
    assert status == 200, body
    assert body["desired"] == "removed"
    assert repo_file(cp, "apps/web.yaml") is None


def test_revisions_list_newest_first_after_an_update(api: WSGIClient) -> None:
    create(api)
    status, body = api.post("/api/apps/web/update", {"image": "nginx:1.27"})
    assert status == 200, body
    assert body["revision"] == "v2"
    status, revisions = api.get("/api/apps/web/revisions")
    assert status == 200
    assert [(r["revision"], r["spec"]["image"]) for r in revisions] == [
        ("v2", "nginx:1.27"),
        ("v1", "nginx:1.25"),
    ]


# -- agents ------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", "token-without-bearer"])
def test_agent_endpoints_need_the_nodes_token(api: WSGIClient, auth: str | None) -> None:
    node, _ = register(api)
    headers = {"Authorization": auth} if auth else {}
    for method, path in [
        ("POST", f"/api/agents/{node}/heartbeat"),
        ("GET", f"/api/agents/{node}/tasks"),
        ("POST", f"/api/agents/{node}/tasks/1"),
    ]:
        status, body = api.request(method, path, {}, headers=headers)
        assert_error(status, body, 401)


def test_unknown_node_is_not_found(api: WSGIClient) -> None:
    _, auth = register(api)
    status, body = api.get("/api/agents/ghost/tasks", headers=auth)
    assert_error(status, body, 404)
    assert "ghost" in body["error"]["message"]


def test_non_numeric_wait_is_a_bad_request(api: WSGIClient) -> None:
    node, auth = register(api)
    status, body = api.get(f"/api/agents/{node}/tasks?wait=abc", headers=auth)
    assert_error(status, body, 400)
    assert "wait" in body["error"]["message"]


def test_nan_wait_is_a_bad_request_not_an_endless_poll(cp: ControlPlane, api: WSGIClient) -> None:
    node, auth = register(api)
    answer: list[tuple[int, Any]] = []
    poll = threading.Thread(
        target=lambda: answer.append(api.get(f"/api/agents/{node}/tasks?wait=nan", headers=auth)),
        daemon=True,
    )
    poll.start()
    poll.join(timeout=5)
    still_polling = poll.is_alive()
    if still_polling:  # give it a task, so that the thread ends
        with cp.store.write() as db:
            tasks.create(db, node_id=node, app="x", kind=TaskKind.STOP, container="docklet.x.1")
        cp.passes.reconcile()
        poll.join(timeout=10)
    assert not still_polling, "GET tasks?wait=nan was still polling after 5s"
    assert_error(*answer[0], 400)


def test_unknown_route_and_wrong_method_answer_in_the_error_shape(api: WSGIClient) -> None:
    status, body = api.get("/api/nope")
    assert_error(status, body, 404)
    assert "/api/nope" in body["error"]["message"]
    status, body = api.delete("/api/health")
    assert_error(status, body, 405)
    assert "DELETE" in body["error"]["message"]


CONTAINER = {
    "id": "c1",
    "name": "docklet.web.1",
    "state": "running",
    "labels": {"docklet.app": "web"},
}


def test_every_failure_has_the_one_error_shape(cp: ControlPlane, api: WSGIClient) -> None:
    create(api)
    node, auth = register(api)
    agent = f"/api/agents/{node}"
    cases: list[tuple[str, str, Any, dict[str, str]]] = [
        ("GET", "/api/nope", None, {}),
        ("PUT", "/api/apps", {}, {}),
        ("DELETE", "/api/health", None, {}),
        ("POST", "/api/apps", b"{", {}),
        ("POST", "/api/apps", b"42", {}),
        ("POST", "/api/apps", b"\xff\xfe", {}),
        ("POST", "/api/apps", {}, {}),
        ("POST", "/api/apps", {"image": 7}, {}),
        ("POST", "/api/apps", {"image": "nginx", "name": "Bad Name"}, {}),
        ("POST", "/api/apps", {"image": "nginx", "replicas": -1}, {}),
        ("POST", "/api/apps", {"image": "nginx", "ports": ["99999"]}, {}),
        ("POST", "/api/apps", {"image": "nginx", "env": ["A=1"]}, {}),
        ("POST", "/api/apps", {"image": "nginx", "state": "removed"}, {}),
        ("POST", "/api/apps", {"image": "nginx", "labels": {"docklet.app": "x"}}, {}),
        ("POST", "/api/apps", {"image": "nginx:1.25", "name": "web"}, {}),
        ("POST", "/api/apps", b"{" + b" " * (5 * 1024 * 1024) + b"}", {}),
        ("GET", "/api/apps/ghost", None, {}),
        ("POST", "/api/apps/web/update", {"name": "other"}, {}),
        ("POST", "/api/apps/web/update", {"replicas": None}, {}),
        ("POST", "/api/apps/web/update", {"image": 5}, {}),
        ("GET", "/api/events?limit=many", None, {}),
        ("GET", "/api/events?limit=nan", None, {}),
        ("POST", "/api/agents/register", {"engine_id": 1, "name": "n"}, {}),
        ("POST", "/api/agents/register", {"engine_id": "e", "name": "bad name!"}, {}),
        ("POST", f"{agent}/heartbeat", {}, {}),
        ("POST", f"{agent}/heartbeat", {"containers": "none"}, auth),
        ("POST", f"{agent}/heartbeat", {"containers": [{"id": "x"}]}, auth),
        ("POST", f"{agent}/heartbeat", {"containers": ["x"]}, auth),
        ("GET", "/api/agents/ghost/tasks", None, auth),
        ("GET", f"{agent}/tasks?wait=soon", None, auth),
        ("POST", f"{agent}/tasks/999", {"status": "done"}, auth),
        ("POST", f"{agent}/tasks/1", {"status": "exploded"}, auth),
        ("POST", f"{agent}/tasks/1", {"status": "done", "lease_token": "x"}, auth),
        ("POST", f"{agent}/tasks/abc", {}, auth),
        # Found by fuzzing: each of these once was a 500.
        ("POST", "/api/apps", b"[" * 100_000, {}),
        ("POST", "/api/apps", b'{"image": ' + b"1" * 5000 + b"}", {}),
        ("POST", "/api/apps", b'{"image": "nginx", "replicas": NaN}', {}),
        ("POST", "/api/apps", b'{"image": "nginx", "command": "\\ud800"}', {}),
        ("POST", "/api/apps/web/update", b'{"command": "\\ud800"}', {}),
        ("POST", "/api/apps", {"image": "nginx", "name": "x1"}, {"X-Docklet-User": "jos\xe9"}),
        ("POST", "/api/apps", {"image": "nginx", "stop_grace_period": 1e300}, {}),
        ("POST", "/api/agents/register", b'{"engine_id": "\\ud800", "name": "n"}', {}),
        ("POST", f"{agent}/heartbeat", {}, {"Authorization": "Bearer \xe9"}),
        ("POST", f"{agent}/heartbeat", {"docker_error": {"a": 1}}, auth),
        ("POST", f"{agent}/heartbeat", {"containers": [], "report_seq": "x"}, auth),
        ("POST", f"{agent}/heartbeat", {"containers": [{**CONTAINER, "id": None}]}, auth),
        ("POST", f"{agent}/heartbeat", {"containers": [{**CONTAINER, "restarts": 2**70}]}, auth),
        ("POST", f"{agent}/heartbeat", {"containers": [{**CONTAINER, "labels": [1]}]}, auth),
        ("POST", f"{agent}/tasks/1", {"status": ["done"]}, auth),
        ("POST", f"{agent}/tasks/{2**70}", {"status": "done"}, auth),
        ("POST", f"{agent}/tasks/1", {"status": "done", "seq": 2**70}, auth),
        ("POST", f"{agent}/tasks/1", {"status": "done", "container_id": {"a": 1}}, auth),
    ]
    failures = []
    for method, path, payload, headers in cases:
        raw = payload if isinstance(payload, bytes) else None
        json_body = None if raw is not None else payload
        status, body = api.request(method, path, json_body, raw=raw, headers=headers)
        error = body.get("error") if isinstance(body, dict) else None
        if (
            not 400 <= status < 500
            or set(body or {}) != {"error"}
            or set(error or {}) != {"code", "message", "status"}
            or not isinstance(error["code"], str)
            or not isinstance(error["message"], str)
            or error["status"] != status
        ):
            failures.append((method, path[:60], status, body))
    assert failures == []


# -- long poll over real HTTP ------------------------------------------------------------


def test_long_poll_returns_a_new_task_promptly(served_cp: str) -> None:
    admin = Client(served_cp, token=ADMIN_TOKEN)
    # A claimed cluster: the node joins with the join token.
    admin.headers["X-Docklet-Join-Token"] = admin.post("/api/nodes/join-token", {})["token"]
    registration = admin.post("/api/agents/register", {"engine_id": "engine-n1", "name": "n1"})
    agent = Client(served_cp, token=registration["token"])
    answer: dict[str, Any] = {}

    def poll() -> None:
        started = time.monotonic()
        answer["tasks"] = agent.get("/api/agents/n1/tasks?wait=5", timeout=15)["tasks"]
        answer["seconds"] = time.monotonic() - started

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.3)  # the poll is waiting before the app exists
    Client(served_cp, token=ADMIN_TOKEN).post("/api/apps", {"image": "nginx:1.25", "name": "web"})
    poller.join(timeout=15)

    assert [(t["kind"], t["app"], t["slot"]) for t in answer["tasks"]] == [("deploy", "web", 1)]
    assert answer["seconds"] < 4


def test_an_app_whose_file_is_broken_yaml_can_still_be_removed(
    cp: ControlPlane, api: WSGIClient
) -> None:
    create(api)
    cp.apps.commit(lambda f: {"apps/web.yaml": b"name: [web\n"}, "Break web", "x <x@x>")
    status, body = api.post("/api/apps/web/stop")
    assert_error(status, body, 400)
    assert "not valid YAML" in body["error"]["message"]
    status, body = api.delete("/api/apps/web")
    assert status == 200, body
    assert repo_file(cp, "apps/web.yaml") is None


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_every_route_meets_bad_input_with_a_4xx_in_the_error_shape(
    api: WSGIClient, route: Route
) -> None:
    """The contract over the route table itself: a route added later is checked too."""
    create(api)
    node, auth = register(api)
    values = {"<name>": ["web", "gh%C3%B8st", "a" * 300], "<node_id>": [node, "ghost"]}
    values["<task_id:int>"] = ["1", str(2**70)]
    paths = [route.path]
    for marker, options in values.items():
        paths = (
            [p.replace(marker, v) for p in paths for v in options]
            if marker in route.path
            else paths
        )
    bodies = [b"{", b"[]", b'{"image": 1e400}', b'{"status": "done", "containers": 7}', b"\xff"]
    for path in paths:
        for raw in bodies:
            for headers in ({}, auth):
                status, body = api.request(route.method, path, raw=raw, headers=headers)
                assert status < 500, (path, raw, status, body)
                if status >= 400:
                    assert set(body) == {"error"}, body
                    assert set(body["error"]) == {"code", "message", "status"}


def test_a_brief_app_list_leaves_out_instances_and_tasks(cp: ControlPlane, api: WSGIClient) -> None:
    node, agent = register(api)
    create(api, replicas=2)
    cp.agents.lease_tasks(node, agent["Authorization"][7:], 0, limit=1)  # one leased, one pending
    status, full = api.get("/api/state/apps")
    assert status == 200 and len(full[0]["tasks"]) == 2 and "instances" in full[0]
    status, brief = api.get("/api/state/apps?brief=true")
    assert status == 200
    # What `docklet ps` prints is all there; the lists that grow with the cluster are not.
    assert brief == [{k: v for k, v in full[0].items() if k not in ("instances", "tasks")}]
    assert api.get("/api/state/apps?brief=0")[1] == full
    status, error = api.get("/api/state/apps?brief=maybe")
    assert status == 400 and "brief" in error["error"]["message"]
