"""POST /api/plan and POST /api/apply over the API, on a real SQLite file and a real Git repo,
with simulated agents (test_scheduler.Agent) where a rollout needs a stable revision to protect.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from conftest import WSGIClient
from test_api import assert_error
from test_scheduler import Agent, put_app

from docklet.common import defaults
from docklet.common.status import TokenScope
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.store import tokens

FAST = {"min_healthy_time": "0s"}
WEB = "name: web\nimage: nginx:1.25\nreplicas: 2\nrollout:\n  min_healthy_time: 0s\n"


def plan(api: WSGIClient, files: dict[str, Any], complete: bool = False) -> dict[str, Any]:
    status, answer = api.post("/api/plan", {"files": files, "complete": complete})
    assert status == 200, answer
    return answer


def entry(answer: dict[str, Any], app: str) -> dict[str, Any]:
    (found,) = [a for a in answer["apps"] if a["app"] == app]
    return found


def stable_web(cp: ControlPlane, *agents: Agent) -> None:
    """web v1, 2 replicas, stable: its containers run and passed the gate."""
    put_app(cp, "web", replicas=2, rollout=FAST)
    for _ in range(2):
        for a in agents:
            a.work()
            a.heartbeat()
        cp.passes.reconcile()
    assert cp.views.app("web")["status"] == "stable"


def snapshot(cp: ControlPlane) -> tuple[list[str], list[tuple[str, int, int, str]]]:
    """Every row of the database, and every file of the repository (size, time, bytes)."""
    db = sqlite3.connect(cp.config.db_path)
    try:
        rows = list(db.iterdump())
    finally:
        db.close()
    files = []
    for path in sorted(Path(cp.config.repo_path).rglob("*")):
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            files.append((str(path), path.stat().st_size, path.stat().st_mtime_ns, digest))
    return rows, files


def test_a_new_app_is_a_create_with_its_slots_on_the_nodes_that_would_run_them(
    cp: ControlPlane, api: WSGIClient
) -> None:
    Agent(cp, "a"), Agent(cp, "b")
    answer = plan(api, {"apps/web.yaml": WEB})
    assert answer["valid"] and answer["errors"] == []
    web = entry(answer, "web")
    assert (web["change"], web["revision"], web["rollout"]) == ("create", "v1", False)
    assert {"field": "image", "old": None, "new": "nginx:1.25"} in web["fields"]
    assert {"field": "replicas", "old": None, "new": 2} in web["fields"]
    assert web["nodes"] == ["a", "b"]  # spread, as the scheduler places them
    assert web["slots"] == [
        {"slot": 1, "node": "a", "action": "deploy"},
        {"slot": 2, "node": "b", "action": "deploy"},
    ]


def test_an_image_change_rolls_out_with_a_canary_and_lists_its_fields(
    cp: ControlPlane, api: WSGIClient
) -> None:
    a, b, c = Agent(cp, "a"), Agent(cp, "b"), Agent(cp, "c")
    stable_web(cp, a, b, c)
    answer = plan(api, {"apps/web.yaml": WEB.replace("nginx:1.25", "nginx:1.26")})
    web = entry(answer, "web")
    assert (web["change"], web["revision"], web["rollout"]) == ("update", "v2", True)
    assert web["fields"] == [{"field": "image", "old": "nginx:1.25", "new": "nginx:1.26"}]
    actions = {s["slot"]: s["action"] for s in web["slots"]}
    assert actions == {1: "canary", 2: "replace"}
    # The canary goes to the node that runs no replica, as the rollout controller puts it.
    (canary,) = [s for s in web["slots"] if s["action"] == "canary"]
    placed = {i["node_id"] for i in cp.views.app("web")["instances"]}
    assert canary["node"] == ({"a", "b", "c"} - placed).pop()
    assert set(web["nodes"]) == {"a", "b", "c"}


def test_a_scale_applies_directly_without_a_rollout(cp: ControlPlane, api: WSGIClient) -> None:
    a, b = Agent(cp, "a"), Agent(cp, "b")
    stable_web(cp, a, b)
    web = entry(plan(api, {"apps/web.yaml": WEB.replace("replicas: 2", "replicas: 3")}), "web")
    assert (web["change"], web["revision"], web["rollout"]) == ("update", "v2", False)
    assert web["fields"] == [{"field": "replicas", "old": 2, "new": 3}]
    assert [(s["slot"], s["action"]) for s in web["slots"]] == [(3, "deploy")]
    down = entry(plan(api, {"apps/web.yaml": WEB.replace("replicas: 2", "replicas: 1")}), "web")
    assert (down["rollout"], [(s["slot"], s["action"]) for s in down["slots"]]) == (
        False,
        [(2, "remove")],
    )


def test_the_same_file_is_no_change_and_a_stop_is_an_update_of_the_state(
    cp: ControlPlane, api: WSGIClient
) -> None:
    Agent(cp, "a")
    put_app(cp, "web", replicas=2, rollout=FAST)
    web = entry(plan(api, {"apps/web.yaml": WEB}), "web")
    assert (web["change"], web["revision"], web["fields"], web["slots"]) == ("none", "v1", [], [])
    stop = entry(plan(api, {"apps/web.yaml": WEB + "state: stopped\n"}), "web")
    assert (stop["change"], stop["revision"], stop["rollout"]) == ("update", "v1", False)
    assert stop["fields"] == [{"field": "state", "old": "running", "new": "stopped"}]


def test_an_invalid_file_gives_the_file_line_errors_sync_gives(
    cp: ControlPlane, api: WSGIClient
) -> None:
    bad = "name: web\nimage: nginx:1.25\nreplicas: many\nport: [80]\n"
    answer = plan(api, {"apps/web.yaml": bad, "apps/api.yaml": "name: api\nimage: nginx\n"})
    assert answer["valid"] is False
    assert [(e["file"], e["line"]) for e in answer["errors"]] == [
        ("apps/web.yaml", 3),
        ("apps/web.yaml", 4),
    ]
    assert [a["app"] for a in answer["apps"]] == ["api"]  # the valid one is still planned
    # The same words the sync records for the same file, once it is committed.
    cp.apps.commit(lambda files: {"apps/web.yaml": bad.encode()}, "Break web", "x <x@x>")
    (synced,) = cp.views.sync_state()["errors"]
    said = "; ".join(f"{e['file']}:{e['line']}: {e['message']}" for e in answer["errors"])
    assert synced["message"] == said
    # Another file broken at the head is not the fault of the file planned.
    assert plan(api, {"apps/api.yaml": "name: api\nimage: nginx\n"})["valid"]
    broken = plan(api, {"apps/x.yaml": "name: [x\n", "apps/y.yaml": "name: z\nimage: nginx\n"})
    assert [e["file"] for e in broken["errors"]] == ["apps/x.yaml", "apps/y.yaml"]
    assert "not valid YAML" in broken["errors"][0]["message"]
    assert "must match the file name" in broken["errors"][1]["message"]


def test_an_app_is_removed_only_when_the_files_are_the_whole_tree(
    cp: ControlPlane, api: WSGIClient
) -> None:
    a = Agent(cp, "a")
    stable_web(cp, a)
    api_only = {"apps/api.yaml": "name: api\nimage: nginx:1.25\n"}
    partial = plan(api, api_only)
    assert [x["app"] for x in partial["apps"]] == ["api"]
    whole = plan(api, api_only, complete=True)
    assert [(x["app"], x["change"]) for x in whole["apps"]] == [
        ("api", "create"),
        ("web", "remove"),
    ]
    gone = entry(whole, "web")
    assert (gone["revision"], gone["nodes"]) == (None, ["a"])
    assert sorted((s["slot"], s["action"]) for s in gone["slots"]) == [(1, "remove"), (2, "remove")]
    # An unusable file keeps its app, as sync keeps it: no removal, an error.
    kept = plan(api, {**api_only, "apps/web.yaml": "name: [web\n"}, complete=True)
    assert "web" not in [x["app"] for x in kept["apps"]] and not kept["valid"]


def test_planning_writes_nothing(cp: ControlPlane, api: WSGIClient) -> None:
    a, b = Agent(cp, "a"), Agent(cp, "b")
    stable_web(cp, a, b)
    api.get("/api/state/apps")  # the token's use is recorded once a minute: now, not below
    before = snapshot(cp)
    plan(api, {"apps/web.yaml": WEB.replace("nginx:1.25", "nginx:1.26")})
    plan(api, {"apps/web.yaml": WEB.replace("replicas: 2", "replicas: 5")})
    plan(api, {"apps/new.yaml": "name: new\nimage: nginx\nreplicas: 3\n"}, complete=True)
    plan(api, {"apps/web.yaml": "name: [web\n"})
    assert snapshot(cp) == before


def test_a_read_token_may_plan_and_bad_input_is_a_4xx_in_the_error_shape(
    cp: ControlPlane, api: WSGIClient
) -> None:
    with cp.store.write() as db:
        reader = tokens.create(db, "viewer", TokenScope.READ, "test")
    as_reader = {"Authorization": f"Bearer {reader}"}
    status, answer = api.post("/api/plan", {"files": {"apps/web.yaml": WEB}}, headers=as_reader)
    assert status == 200 and answer["valid"], answer
    too_many = {f"apps/a{n}.yaml": "" for n in range(defaults.MAX_APP_FILES + 1)}
    cases = [
        ({}, 400, "'files'"),
        ({"files": []}, 400, "'files'"),
        ({"files": {"web.yaml": WEB}}, 400, "apps/NAME.yaml"),
        ({"files": {"apps/x/web.yaml": WEB}}, 400, "apps/NAME.yaml"),
        ({"files": {"apps/web.yaml": 7}}, 400, "text"),
        ({"files": {"apps/web.yaml": WEB}, "complete": "yes"}, 400, "'complete'"),
        ({"files": too_many}, 413, f"at most {defaults.MAX_APP_FILES} files"),
    ]
    for request, code, words in cases:
        status, body = api.post("/api/plan", request)
        assert_error(status, body, code)
        assert words in body["error"]["message"], body
    big = "name: web\nimage: nginx\n" + "#" * defaults.MAX_SPEC_BYTES
    errors = plan(api, {"apps/web.yaml": big})["errors"]
    assert [(e["file"], e["line"]) for e in errors] == [("apps/web.yaml", None)]
    assert errors[0]["message"] == "256.1 KiB is over the 256 KiB limit for a spec file"
    odd = plan(api, {"apps/notes.txt": "hi", "apps/gone.yaml": None})
    assert [(e["file"], e["message"][:8]) for e in odd["errors"]] == [
        ("apps/gone.yaml", "not sent"),
        ("apps/notes.txt", "ignored:"),
    ]


def test_apply_commits_a_valid_file_as_the_caller_and_refuses_an_invalid_one(
    cp: ControlPlane, api: WSGIClient
) -> None:
    Agent(cp, "a")
    text = "# the web tier\n" + WEB
    status, answer = api.post(
        "/api/apply",
        {"file": "apps/web.yaml", "text": text},
        headers={"X-Docklet-User": "ana"},
    )
    assert status == 200, answer
    assert (answer["app"], answer["revision"]) == ("web", "v1") and answer["commit"]
    head = cp.repo.read(cp.repo.head())
    assert head.files["apps/web.yaml"] == text.encode()  # as written, comment and all
    assert head.author.startswith("ana ") and head.message.startswith("Apply apps/web.yaml")
    status, again = api.post("/api/apply", {"file": "apps/web.yaml", "text": text})
    assert status == 200 and again["commit"] is None  # unchanged: no commit
    sha = cp.repo.head()
    status, body = api.post(
        "/api/apply", {"file": "apps/web.yaml", "text": "name: web\nreplica: 2\n"}
    )
    assert_error(status, body, 400)
    assert "apps/web.yaml:2: replica: unknown key" in body["error"]["message"]
    assert "nothing was committed" in body["error"]["message"]
    assert cp.repo.head() == sha
    for request in ({}, {"file": "apps/web.yaml"}, {"file": "../etc/passwd", "text": "x"}):
        status, body = api.post("/api/apply", request)
        assert_error(status, body, 400)


def test_apply_keeps_the_name_of_the_file_the_app_has(cp: ControlPlane, api: WSGIClient) -> None:
    cp.apps.commit(lambda f: {"apps/web.yml": WEB.encode()}, "web as .yml", "x <x@x>")
    changed = WEB.replace("replicas: 2", "replicas: 3")
    web = entry(plan(api, {"apps/web.yaml": changed}), "web")
    assert (web["change"], web["fields"]) == ("update", [{"field": "replicas", "old": 2, "new": 3}])
    status, answer = api.post("/api/apply", {"file": "apps/web.yaml", "text": changed})
    assert status == 200, answer
    files = cp.repo.read(cp.repo.head()).files
    assert sorted(files) == ["apps/web.yml"] and files["apps/web.yml"] == changed.encode()


def test_the_note_says_what_stands_in_the_way(cp: ControlPlane, api: WSGIClient) -> None:
    web = entry(plan(api, {"apps/web.yaml": WEB}), "web")
    assert (web["change"], web["slots"], web["nodes"]) == ("create", [], [])
    assert web["note"].startswith("no online node to run it")
    a = Agent(cp, "a")
    stable_web(cp, a)
    bad = WEB.replace("nginx:1.25", "nginx:broken")
    put_app(cp, "web", replicas=2, image="nginx:broken", rollout=FAST)
    for _ in range(2):
        a.work(fail="pull nginx:broken: manifest unknown")
        a.heartbeat()
        cp.passes.reconcile()
    assert cp.views.rollouts("web")[0]["status"] == "rolled_back"
    # The same container spec with a new label: held, as the rollout controller holds it.
    held = entry(plan(api, {"apps/web.yaml": bad + "labels: {team: web}\n"}), "web")
    assert (held["change"], held["revision"], held["rollout"]) == ("update", "v3", False)
    assert "failed before" in held["note"] and "docklet rollout retry web" in held["note"]


# -- secrets: planned as sync pins them ---------------------------------------------------

SECRET_WEB = WEB + "env:\n  PLAIN: x\n  DB_PASSWORD: {secret: db-password}\n"


def set_secret(api: WSGIClient, name: str, value: str) -> None:
    status, answer = api.request("PUT", f"/api/secrets/{name}", {"value": value})
    assert status == 200, answer


def commit_web(cp: ControlPlane, text: str) -> None:
    cp.apps.commit(lambda files: {"apps/web.yaml": text.encode()}, "web", "x <x@x>")


def test_an_unchanged_app_that_uses_a_secret_is_no_change(
    cp: ControlPlane, api: WSGIClient
) -> None:
    value = "CANARY-plan-secret-value"
    set_secret(api, "db-password", value)
    commit_web(cp, SECRET_WEB)
    answer = plan(api, {"apps/web.yaml": SECRET_WEB})
    web = entry(answer, "web")
    assert (answer["valid"], web["change"], web["revision"], web["fields"]) == (
        True,
        "none",
        "v1",
        [],
    )
    # The version written out, as the revision has it, is the same spec.
    pinned = SECRET_WEB.replace("{secret: db-password}", "{secret: db-password, version: 1}")
    assert entry(plan(api, {"apps/web.yaml": pinned}), "web")["change"] == "none"
    # A real change still shows only what changed, not the secret's version.
    bigger = entry(
        plan(api, {"apps/web.yaml": SECRET_WEB.replace("replicas: 2", "replicas: 3")}), "web"
    )
    assert bigger["fields"] == [{"field": "replicas", "old": 2, "new": 3}]
    assert value not in json.dumps(answer)


def test_a_missing_secret_is_an_error_with_its_line_as_a_push_gets(
    cp: ControlPlane, api: WSGIClient
) -> None:
    set_secret(api, "db-password", "one")
    missing = SECRET_WEB.replace("db-password", "nope")
    answer = plan(api, {"apps/web.yaml": missing, "apps/api.yaml": "name: api\nimage: nginx\n"})
    assert answer["valid"] is False
    assert answer["errors"] == [
        {
            "file": "apps/web.yaml",
            "line": 8,
            "message": "env.DB_PASSWORD: secret 'nope' does not exist: docklet secret set nope",
        }
    ]
    assert [a["app"] for a in answer["apps"]] == ["api"]  # web keeps its state; api is planned
    no_version = SECRET_WEB.replace("{secret: db-password}", "{secret: db-password, version: 4}")
    (error,) = plan(api, {"apps/web.yaml": no_version})["errors"]
    assert (error["line"], error["message"]) == (
        8,
        "env.DB_PASSWORD: secret 'db-password' has no version 4 (kept: v1);"
        " remove `version:` to use the newest",
    )
    # Word for word what the sync records once the file is pushed.
    commit_web(cp, missing)
    (synced,) = cp.views.sync_state()["errors"]
    assert synced["message"] == f"apps/web.yaml:8: {answer['errors'][0]['message']}"


def test_after_a_new_value_the_unchanged_file_is_no_change_and_an_old_pin_is(
    cp: ControlPlane, api: WSGIClient
) -> None:
    set_secret(api, "db-password", "one")
    commit_web(cp, SECRET_WEB)
    # `secret set` made the revision that uses the new value already: the file asks nothing more.
    set_secret(api, "db-password", "two")
    assert cp.views.app("web")["target_revision"] == "v2"
    web = entry(plan(api, {"apps/web.yaml": SECRET_WEB}), "web")
    assert (web["change"], web["revision"], web["fields"]) == ("none", "v2", [])
    # Pinning the old value back is a change of that version: a new revision.
    old = SECRET_WEB.replace("{secret: db-password}", "{secret: db-password, version: 1}")
    back = entry(plan(api, {"apps/web.yaml": old}), "web")
    assert (back["change"], back["revision"]) == ("update", "v3")
    assert back["fields"] == [{"field": "env.DB_PASSWORD.version", "old": 2, "new": 1}]


def test_apply_refuses_a_missing_secret_as_update_does(cp: ControlPlane, api: WSGIClient) -> None:
    set_secret(api, "db-password", "one")
    sha = cp.repo.head()
    missing = SECRET_WEB.replace("db-password", "nope")
    status, body = api.post("/api/apply", {"file": "apps/web.yaml", "text": missing})
    assert_error(status, body, 400)
    assert body["error"]["message"] == (
        "apps/web.yaml:8: env.DB_PASSWORD: secret 'nope' does not exist: docklet secret set"
        " nope; nothing was committed"
    )
    assert cp.repo.head() == sha
    status, answer = api.post("/api/apply", {"file": "apps/web.yaml", "text": SECRET_WEB})
    assert status == 200 and answer["revision"] == "v1", answer
