"""The scheduler: desired state and agents' reports in, tasks out.

Agents are simulated by `Agent`: it registers, leases, reports and sends
heartbeats with exactly the data a real agent sends, and keeps its
"containers" in a dict instead of a Docker engine.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
import yaml
from conftest import silence

from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.service.views import app_views
from docklet.cp.settings import CPConfig
from docklet.cp.store import tasks
from docklet.cp.store.nodes import hash_token
from docklet.wire.protocol import Heartbeat, Registration, TaskReport

AUTHOR = "tester <tester@example.com>"


class Agent:
    """One node's agent, as the CP sees it."""

    def __init__(self, cp: ControlPlane, name: str) -> None:
        self.cp, self.name = cp, name
        self.containers: dict[str, dict[str, Any]] = {}
        self.register()

    def register(self) -> None:
        """Start (or restart) the agent: same engine, so the same node, a new token."""
        reply = self.cp.agents.register(
            Registration(engine_id=f"engine-{self.name}", name=self.name),
            join_token=self.cp.tokens.join_token(),
        )
        self.node_id, self.token = reply["node_id"], reply["token"]
        self.seq = 0

    def heartbeat(self) -> None:
        body = {"report_seq": self.seq, "containers": list(self.containers.values())}
        self.cp.agents.heartbeat(self.node_id, Heartbeat.model_validate(body))

    def work(self, fail: str | None = None) -> list[dict[str, Any]]:
        """Lease this node's tasks and carry them out (or fail them with `fail`)."""
        with self.cp.store.write() as db:
            leased = tasks.lease(db, self.node_id, hash_token(self.token), 60)
        for task in leased:
            self.seq += 1
            body: dict[str, Any] = {"lease_token": task["lease_token"], "seq": self.seq}
            if fail:
                body.update(status="failed", error=fail)
            else:
                container = self._execute(task)
                body.update(status="done", container=container)
                body["container_id"] = container["id"] if container else None
            self.cp.agents.report(self.node_id, task["id"], TaskReport.model_validate(body))
        return leased

    def _execute(self, task: dict[str, Any]) -> dict[str, Any] | None:
        name = task["container"]
        old = self.containers.get(name)
        if task["kind"] == "remove":
            self.containers.pop(name, None)
            return None
        if task["kind"] == "stop":
            self.containers[name] = {**old, "state": "exited", "exit_code": 0}
            return self.containers[name]
        for replaced in task["payload"].get("replaces", []):  # stop-first
            if replaced in self.containers:
                self.containers[replaced] = {**self.containers[replaced], "state": "exited"}
        if False:
            pass
        elif old and old["labels"]["docklet.spec-hash"] == task["payload"]["container_hash"]:
            self.containers[name] = {**old, "state": "running", "exit_code": None}
        else:  # a new container, as Docker would create it
            self.containers[name] = {
                "id": f"{name}-t{task['id']}",
                "name": name,
                "image": task["payload"]["image"],
                "state": "running",
                "health": None,
                "exit_code": None,
                "restarts": 0,
                "labels": {
                    "docklet.cluster": self.cp.cluster_id,
                    "docklet.app": task["app"],
                    "docklet.slot": str(task["slot"]),
                    "docklet.revision": str(task["revision"]),
                    "docklet.spec-hash": task["payload"]["container_hash"],
                    "docklet.node": self.node_id,
                },
            }
        return self.containers[name]

    def crash(self, slot_name: str) -> None:
        """The slot's container (`docklet.web.1`) dies on its own; the next heartbeat says so."""
        (name,) = [n for n in self.containers if n.startswith(slot_name + ".")]
        self.containers[name] = {**self.containers[name], "state": "exited", "exit_code": 137}
        self.heartbeat()


def put_app(cp: ControlPlane, name: str, **fields: Any) -> None:
    """Commit apps/<name>.yaml with these fields (the CP syncs and reconciles at once)."""
    spec = {"name": name, "image": "nginx:1.25", **fields}
    text = yaml.safe_dump(spec).encode()
    cp.apps.commit(lambda files: {f"apps/{name}.yaml": text}, f"Put {name}", AUTHOR)


def delete_app(cp: ControlPlane, name: str) -> None:
    cp.apps.commit(lambda files: {f"apps/{name}.yaml": None}, f"Remove {name}", AUTHOR)


def open_tasks(cp: ControlPlane, app: str) -> list[tuple[str, int | None, str]]:
    """(kind, slot, node) of every pending or leased task of the app."""
    rows = cp.store.query(
        "SELECT kind, slot, node_id FROM tasks WHERE app = ? AND status IN ('pending', 'running')"
        " ORDER BY slot, id",
        (app,),
    )
    return [(r["kind"], r["slot"], r["node_id"]) for r in rows]


def placements(cp: ControlPlane, app: str) -> dict[int, str]:
    rows = cp.store.query("SELECT slot, node_id FROM placements WHERE app = ?", (app,))
    return {r["slot"]: r["node_id"] for r in rows}


def containers(cp: ControlPlane, app: str) -> list[dict[str, Any]]:
    return cp.store.query("SELECT * FROM containers WHERE app = ? ORDER BY slot", (app,))


def go_offline(cp: ControlPlane, node_id: str) -> None:
    """The node's heartbeats stopped an hour ago (and the CP has been up all along)."""
    cp.liveness.started_at = time.time() - 7200
    silence(cp, node_id, time.time() - 3600)


def app_row(cp: ControlPlane, name: str) -> dict[str, Any] | None:
    return cp.store.one("SELECT * FROM apps WHERE name = ?", (name,))


# -- placement ---------------------------------------------------------------


def test_one_node_gets_every_slot(cp: ControlPlane) -> None:
    Agent(cp, "a")
    put_app(cp, "web", replicas=3)
    assert open_tasks(cp, "web") == [("deploy", 1, "a"), ("deploy", 2, "a"), ("deploy", 3, "a")]


def test_three_replicas_spread_one_per_node(cp: ControlPlane) -> None:
    for name in ("a", "b", "c"):
        Agent(cp, name)
    put_app(cp, "web", replicas=3)
    assert Counter(placements(cp, "web").values()) == {"a": 1, "b": 1, "c": 1}
    assert sorted(node for _, _, node in open_tasks(cp, "web")) == ["a", "b", "c"]


def test_five_replicas_on_two_nodes_split_three_and_two(cp: ControlPlane) -> None:
    Agent(cp, "a")
    Agent(cp, "b")
    put_app(cp, "web", replicas=5)
    assert sorted(Counter(placements(cp, "web").values()).values()) == [2, 3]
    assert len(open_tasks(cp, "web")) == 5


def test_reconcile_twice_queues_nothing_twice(cp: ControlPlane) -> None:
    agent = Agent(cp, "a")
    put_app(cp, "web", replicas=2)
    queued = open_tasks(cp, "web")
    assert cp.passes.reconcile() == 0
    assert open_tasks(cp, "web") == queued
    agent.work()
    agent.heartbeat()
    assert cp.passes.reconcile() == 0
    assert cp.passes.reconcile() == 0
    assert open_tasks(cp, "web") == []


def test_offline_nodes_slots_move_and_its_old_container_is_removed(cp: ControlPlane) -> None:
    a = Agent(cp, "a")
    put_app(cp, "web")
    a.work()
    a.heartbeat()
    b = Agent(cp, "b")
    assert cp.passes.reconcile() == 0  # a new node alone moves nothing

    go_offline(cp, "a")
    cp.passes.reconcile()
    assert placements(cp, "web") == {1: "b"}
    assert ("deploy", 1, "b") in open_tasks(cp, "web")
    b.work()
    b.heartbeat()

    a.heartbeat()  # back, still running the old container
    cp.passes.reconcile()
    assert open_tasks(cp, "web") == [("remove", 1, "a")]
    a.work()
    a.heartbeat()
    cp.passes.reconcile()
    assert [(c["node_id"], c["state"]) for c in containers(cp, "web")] == [("b", "running")]
    assert placements(cp, "web") == {1: "b"}
    assert open_tasks(cp, "web") == []


def test_placement_nodes_are_honoured(cp: ControlPlane) -> None:
    for name in ("a", "b", "c"):
        Agent(cp, name)
    put_app(cp, "web", replicas=2, placement={"nodes": ["c"]})
    assert placements(cp, "web") == {1: "c", 2: "c"}
    assert open_tasks(cp, "web") == [("deploy", 1, "c"), ("deploy", 2, "c")]


def test_app_with_no_eligible_node_says_why_until_one_joins(cp: ControlPlane) -> None:
    Agent(cp, "a")
    put_app(cp, "web", placement={"nodes": ["gpu-1"]})
    assert open_tasks(cp, "web") == []
    error = app_views(cp.store, cp.config, "web")[0]["last_error"]
    assert "gpu-1" in error and "placement.nodes" in error

    Agent(cp, "gpu-1")
    cp.passes.reconcile()
    assert open_tasks(cp, "web") == [("deploy", 1, "gpu-1")]
    assert app_row(cp, "web")["last_error"] is None


def test_app_with_no_node_at_all_says_to_start_an_agent(cp: ControlPlane) -> None:
    put_app(cp, "web")
    assert "no online node" in app_row(cp, "web")["last_error"]
    assert "docklet-agent" in app_row(cp, "web")["last_error"]


# -- stop and remove ------------------------------------------------------------


def test_stop_queues_stop_tasks_only_for_running_containers(cp: ControlPlane) -> None:
    agent = Agent(cp, "a")
    put_app(cp, "web", replicas=2)
    agent.work()
    agent.crash("docklet.web.2")

    put_app(cp, "web", replicas=2, state="stopped")
    assert open_tasks(cp, "web") == [("stop", 1, "a")]
    agent.work()
    agent.heartbeat()
    assert cp.passes.reconcile() == 0
    assert [c["state"] for c in containers(cp, "web")] == ["exited", "exited"]


def test_stopped_app_started_again_runs_at_once(cp: ControlPlane) -> None:
    agent = Agent(cp, "a")
    put_app(cp, "web")
    agent.work()
    put_app(cp, "web", state="stopped")
    agent.work()
    agent.heartbeat()

    put_app(cp, "web", state="running")
    assert open_tasks(cp, "web") == [("deploy", 1, "a")]


def test_deleted_app_is_removed_then_forgotten(cp: ControlPlane) -> None:
    agent = Agent(cp, "a")
    put_app(cp, "web", replicas=2)
    agent.work()
    agent.heartbeat()

    delete_app(cp, "web")
    assert open_tasks(cp, "web") == [("remove", 1, "a"), ("remove", 2, "a")]
    assert app_row(cp, "web")["desired"] == "removed"

    agent.work()
    cp.passes.reconcile()
    assert app_row(cp, "web") is None
    assert cp.store.query("SELECT id FROM tasks WHERE app = 'web'") == []
    assert placements(cp, "web") == {}


# -- failures and healing -----------------------------------------------------------


def test_failed_deploy_is_not_retried_until_the_app_is_stopped_and_started(
    cp: ControlPlane,
) -> None:
    agent = Agent(cp, "a")
    put_app(cp, "web")
    agent.work(fail="pull access denied for nginx")
    assert cp.passes.reconcile() == 0
    assert open_tasks(cp, "web") == []
    view = app_views(cp.store, cp.config, "web")[0]
    assert view["actual"] == "failed"
    assert "pull access denied" in view["errors"][0]["error"]

    put_app(cp, "web", state="stopped")
    assert open_tasks(cp, "web") == []
    put_app(cp, "web")
    assert open_tasks(cp, "web") == [("deploy", 1, "a")]


def test_exited_container_is_redeployed_only_after_heal_delay(cp: ControlPlane) -> None:
    agent = Agent(cp, "a")
    put_app(cp, "web")
    agent.work()
    agent.crash("docklet.web.1")
    assert cp.passes.reconcile() == 0

    def down_for(seconds: float) -> None:
        now = time.time()
        with cp.store.write() as db:  # agent and app unchanged for an hour, container down
            db.execute("UPDATE nodes SET registered_at = ?", (now - 3600,))
            db.execute("UPDATE apps SET updated_at = ?", (now - 3600,))
            db.execute("UPDATE containers SET down_since = ?", (now - seconds,))

    down_for(cp.config.heal_delay - 2)
    assert cp.passes.reconcile() == 0
    down_for(cp.config.heal_delay + 1)
    assert cp.passes.reconcile() == 1
    assert open_tasks(cp, "web") == [("deploy", 1, "a")]


def test_exited_container_is_redeployed_at_once_when_its_agent_restarts(
    cp: ControlPlane,
) -> None:
    agent = Agent(cp, "a")
    put_app(cp, "web")
    agent.work()
    agent.crash("docklet.web.1")
    assert cp.passes.reconcile() == 0

    agent.register()
    agent.heartbeat()
    assert cp.passes.reconcile() == 1
    assert open_tasks(cp, "web") == [("deploy", 1, "a")]


# -- updates --------------------------------------------------------------------------


def test_scaling_up_keeps_slot_one_container(cp: ControlPlane) -> None:
    agent = Agent(cp, "a")
    put_app(cp, "web")
    agent.work()
    agent.heartbeat()
    (first,) = containers(cp, "web")

    put_app(cp, "web", replicas=3)
    assert open_tasks(cp, "web") == [("deploy", 2, "a"), ("deploy", 3, "a")]
    agent.work()
    agent.heartbeat()
    after = containers(cp, "web")
    assert after[0]["container_id"] == first["container_id"]
    assert {c["container_hash"] for c in after} == {first["container_hash"]}
    assert [c["state"] for c in after] == ["running"] * 3


def test_image_change_is_canaried_on_one_slot_first(cp: ControlPlane) -> None:
    agent = Agent(cp, "a")
    put_app(cp, "web", replicas=2)
    agent.work()
    agent.heartbeat()
    cp.passes.reconcile()  # v1 runs everywhere: stable

    put_app(cp, "web", replicas=2, image="nginx:1.27")
    assert open_tasks(cp, "web") == [("deploy", 1, "a")]  # exactly one task: the canary
    leased = agent.work()
    assert {(t["revision"], t["payload"]["image"]) for t in leased} == {(2, "nginx:1.27")}


# -- found in review -----------------------------------------------------------------


def test_start_right_after_stop_cancels_the_queued_stop_and_runs_at_once(
    cp: ControlPlane,
) -> None:
    a = Agent(cp, "a")
    put_app(cp, "web")
    a.work()
    a.heartbeat()
    put_app(cp, "web", state="stopped")
    assert open_tasks(cp, "web") == [("stop", 1, "a")]
    put_app(cp, "web", state="running")  # before the agent got to the stop
    assert open_tasks(cp, "web") == []  # the stop is moot; the container still runs
    assert app_views(cp.store, cp.config, "web")[0]["actual"] == "running"


def test_a_moved_slot_leaves_no_pending_work_on_the_offline_node(cp: ControlPlane) -> None:
    Agent(cp, "a")
    put_app(cp, "web")
    assert open_tasks(cp, "web") == [("deploy", 1, "a")]  # a never took it
    Agent(cp, "b")
    go_offline(cp, "a")
    cp.passes.reconcile()
    assert open_tasks(cp, "web") == [("deploy", 1, "b")]


def test_an_app_removed_while_its_node_is_offline_is_forgotten_and_cleaned_later(
    cp: ControlPlane,
) -> None:
    a = Agent(cp, "a")
    put_app(cp, "web")
    a.work()
    a.heartbeat()
    go_offline(cp, "a")
    delete_app(cp, "web")
    cp.passes.reconcile()
    assert app_row(cp, "web") is None  # not stuck in "removing" for a node that is gone
    a.heartbeat()  # the node returns with the old container
    cp.passes.reconcile()
    assert open_tasks(cp, "web") == [("remove", 1, "a")]
    a.work()
    a.heartbeat()
    assert containers(cp, "web") == []


def test_a_deploy_lost_with_its_agent_is_tried_again_later(cp: ControlPlane) -> None:
    Agent(cp, "a")
    put_app(cp, "web")
    with cp.store.write() as db:  # the agent leased it and then never answered, 3 times
        db.execute(
            "UPDATE tasks SET status = 'failed', lost = 1, error = 'no report',"
            " finished_at = ? WHERE app = 'web'",
            (time.time() - cp.config.heal_delay - 1,),
        )
    cp.passes.reconcile()
    assert open_tasks(cp, "web") == [("deploy", 1, "a")]


def test_concurrent_commits_never_undo_each_other(cp: ControlPlane) -> None:
    Agent(cp, "a")
    names = [f"app{n}" for n in range(48)]
    threads = [threading.Thread(target=put_app, args=(cp, name)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cp.passes.reconcile()
    assert sorted(r["name"] for r in cp.store.query("SELECT name FROM apps")) == sorted(names)
    assert cp.store.query("SELECT * FROM events WHERE kind = 'app_removed'") == []


def test_the_event_log_keeps_only_the_newest_events(
    cp: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    cp.config = CPConfig(**{**dict(cp.config), "events_kept": 5})
    Agent(cp, "a")
    for n in range(4):
        put_app(cp, f"app{n}")  # each makes several events
    cp.passes.reconcile()
    events = cp.store.query("SELECT message FROM events ORDER BY id")
    assert len(events) == 5
    assert events[-1]["message"].startswith("task")  # the newest survive
