"""The rollout controller against a real SQLite file and real Git repo, with simulated agents.

Each test drives the control plane pass by pass, the way agents' reports and
heartbeats would, and checks what a user would see: which tasks exist, which
containers run, what `ps`, the rollout and the history say.
"""

from __future__ import annotations

import time
from typing import Any

import pygit2
from conftest import silence
from test_scheduler import Agent, open_tasks, put_app

from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.settings import CPConfig

FAST = {"min_healthy_time": "0s"}


def step(cp: ControlPlane, *agents: Agent, fail: str | None = None) -> None:
    """One round: agents do their work and report, then the control plane takes a pass."""
    for a in agents:
        a.work(fail=fail)
        a.heartbeat()
    cp.passes.reconcile()


def running(agent: Agent) -> dict[str, int]:
    """Running containers by name → revision."""
    return {
        n: int(c["labels"]["docklet.revision"])
        for n, c in agent.containers.items()
        if c["state"] == "running"
    }


def latest(cp: ControlPlane, app: str = "web") -> dict[str, Any]:
    return cp.views.rollouts(app)[0]


def stable_v1(cp: ControlPlane, *agents: Agent, replicas: int = 2, **spec: Any) -> None:
    put_app(cp, "web", replicas=replicas, rollout=FAST, **spec)
    step(cp, *agents)
    step(cp, *agents)
    assert cp.views.app("web")["status"] == "stable"


def test_a_good_update_canaries_promotes_and_becomes_stable(cp: ControlPlane) -> None:
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=FAST)
    assert open_tasks(cp, "web") == [("deploy", 1, "a")]
    assert cp.views.app("web")["status"] == "rolling_update"
    assert cp.views.app("web")["revision"] == "v2"
    step(cp, a)  # the canary runs next to the old container (start-first)
    assert sorted(running(a).values()) in ([1, 1, 2], [1, 2])
    for _ in range(4):
        step(cp, a)
    view = cp.views.app("web")
    assert (view["status"], view["revision"], view["running_revision"]) == ("stable", "v2", "v2")
    assert sorted(running(a).values()) == [2, 2]
    assert len(a.containers) == 2  # the old ones are gone once v2 is stable
    r = latest(cp)
    assert (r["status"], r["done"], r["total"]) == ("stable", 2, 2)
    history = {h["revision"]: h["status"] for h in cp.views.revisions("web")}
    assert history == {"v2": "stable", "v1": "replaced"}
    kinds = [e["message"] for e in cp.views.events("web", 200) if e["kind"] == "rollout"]
    assert any("pending → canary" in k for k in kinds) and any("→ stable" in k for k in kinds)


def test_a_canary_docker_refuses_is_rolled_back_and_the_old_revision_never_stops(
    cp: ControlPlane,
) -> None:
    a = Agent(cp, "a")
    stable_v1(cp, a)
    before = running(a)
    put_app(cp, "web", replicas=2, image="nginx:does-not-exist", rollout=FAST)
    step(cp, a, fail="pull nginx:does-not-exist: manifest unknown")
    step(cp, a)
    r = latest(cp)
    assert r["status"] == "rolled_back" and r["failed_phase"] == "canary"
    assert r["reason"] == "pull nginx:does-not-exist: manifest unknown"
    assert r["evidence"] == {
        "error": "pull nginx:does-not-exist: manifest unknown",
        "exit_code": None,
        "health": None,
        "logs": None,
    }
    assert running(a) == before  # never interrupted
    view = cp.views.app("web")
    assert (view["status"], view["revision"], view["actual"]) == ("stable", "v1", "running")
    assert {h["revision"]: h["status"] for h in cp.views.revisions("web")}["v2"] == "failed"
    # Git tells the truth without a revert commit: a note on the failed commit, and
    # the deployed ref on the commit that runs.
    repo = pygit2.Repository(str(cp.config.repo_path))
    v1, v2 = (cp.views.revisions("web")[i]["commit_sha"] for i in (1, 0))
    assert str(repo.references["refs/docklet/deployed/web"].target) == v1
    note = repo.lookup_note(v2, "refs/notes/docklet").message
    assert "rolled_back" in note and "manifest unknown" in note
    assert repo.references["refs/heads/main"].target == pygit2.Oid(hex=cp.repo.head())


def test_a_canary_that_exits_fails_with_its_exit_code(cp: ControlPlane) -> None:
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:crashes", rollout=FAST)
    a.work()
    (canary,) = [n for n, c in a.containers.items() if c["labels"]["docklet.revision"] == "2"]
    a.containers[canary] = {**a.containers[canary], "state": "exited", "exit_code": 1}
    a.heartbeat()
    cp.passes.reconcile()
    r = latest(cp)
    assert r["status"] in ("rolling_back", "rolled_back")
    assert r["reason"].startswith("exited with code 1 after")
    assert r["evidence"]["exit_code"] == 1


def test_a_newer_revision_supersedes_the_rollout_and_starts_from_the_stable_one(
    cp: ControlPlane,
) -> None:
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout={"min_healthy_time": "1h"})
    step(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.28", rollout=FAST)
    first, second = cp.views.rollouts("web")[1], cp.views.rollouts("web")[0]
    assert first["status"] == "superseded"
    assert (second["from_revision"], second["revision"]) == ("v1", "v3")
    for _ in range(5):
        step(cp, a)
    assert sorted(running(a).values()) == [3, 3]
    assert {h["revision"]: h["status"] for h in cp.views.revisions("web")}["v2"] == "superseded"


def test_the_same_failed_spec_is_held_until_a_person_retries(cp: ControlPlane) -> None:
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:bad", rollout=FAST)
    step(cp, a, fail="no such image")
    step(cp, a)
    # Only a label changes: the same container that failed is not tried again by itself.
    put_app(cp, "web", replicas=2, image="nginx:bad", rollout=FAST, labels={"team": "x"})
    view = cp.views.app("web")
    assert view["held"] and "docklet rollout retry web" in view["held"]
    assert open_tasks(cp, "web") == []
    cp.apps.retry("web")
    assert latest(cp)["revision"] == "v3" and not latest(cp)["terminal"]
    assert open_tasks(cp, "web") == [("deploy", 1, "a")]


def test_host_ports_make_the_new_container_replace_the_old_one_stop_first(
    cp: ControlPlane,
) -> None:
    a = Agent(cp, "a")
    stable_v1(cp, a, replicas=1, ports=["8080:80"])
    put_app(cp, "web", replicas=1, ports=["8080:80"], image="nginx:1.27", rollout=FAST)
    (task,) = a.work()
    assert task["payload"]["replaces"] == [n for n in a.containers if n != task["container"]]


def test_a_canary_that_never_gets_healthy_fails_at_its_deadline(cp: ControlPlane) -> None:
    a = Agent(cp, "a")
    stable_v1(cp, a)
    slow = {"min_healthy_time": "0s", "healthy_deadline": "30s"}
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=slow, healthcheck={"test": "x"})
    a.work()
    for c in a.containers.values():
        if c["labels"]["docklet.revision"] == "2":
            c["health"] = "starting"
    a.heartbeat()
    cp.passes.reconcile()
    assert latest(cp)["status"] == "verifying"
    with cp.store.write() as db:  # 30 s pass while the canary stays "starting"
        db.execute("UPDATE rollouts SET deadline = ?", (time.time() - 1,))
    cp.passes.reconcile()
    r = latest(cp)
    assert r["status"] in ("rolling_back", "rolled_back")
    assert "not healthy within the healthy deadline (30s)" in r["reason"]


def test_a_restarted_control_plane_resumes_the_rollout_with_its_downtime_given_back(
    cp: ControlPlane, config: CPConfig
) -> None:
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout={"min_healthy_time": "0s"})
    deadline = latest(cp)["deadline"]
    with cp.store.write() as db:  # the CP's last pass was 100 s ago; then it was down
        db.execute(
            "UPDATE meta SET value = ? WHERE key = 'last_pass_at'", (repr(time.time() - 100),)
        )
    cp.store.close()
    restarted = ControlPlane(config)
    try:
        assert restarted.views.rollouts("web")[0]["deadline"] >= deadline + 99
        a.cp = restarted
        for _ in range(5):
            step(restarted, a)
        assert restarted.views.rollouts("web")[0]["status"] == "stable"
    finally:
        restarted.store.close()


def test_rollback_commits_the_old_spec_and_rolls_out_fast(cp: ControlPlane) -> None:
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=FAST)
    for _ in range(5):
        step(cp, a)
    assert cp.views.app("web")["running_revision"] == "v2"
    answer = cp.apps.rollback("web", None, "Alice <alice@example.com>")
    assert answer["commit"] and answer["revision"] == "v3"
    commit = cp.repo.read(cp.repo.head())
    assert commit.message.startswith("Roll back app web to v1")
    assert latest(cp)["status"] == "promoting"  # v1's containers are known good: no canary
    for _ in range(4):
        step(cp, a)
    assert cp.views.app("web")["running_revision"] == "v3"
    assert sorted(running(a).values()) == [3, 3] or sorted(running(a).values()) == [1, 1]


def test_a_canary_whose_health_check_turns_unhealthy_is_rolled_back_with_its_output(
    cp: ControlPlane,
) -> None:
    a = Agent(cp, "a")
    stable_v1(cp, a)
    hc = {"test": ["wget", "-q", "-O-", "http://localhost/"], "interval": "1s"}
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=FAST, healthcheck=hc)
    a.work()
    for c in a.containers.values():
        if c["labels"]["docklet.revision"] == "2":
            c.update(health="unhealthy", health_log="wget: server returned error: 500")
    a.heartbeat()
    cp.passes.reconcile()
    r = latest(cp)
    assert r["status"] in ("rolling_back", "rolled_back")
    assert r["reason"] == "unhealthy: wget: server returned error: 500"
    assert r["evidence"]["health"] == "wget: server returned error: 500"


def test_a_lost_canary_node_is_not_the_revisions_fault(cp: ControlPlane) -> None:
    a, b = Agent(cp, "a"), Agent(cp, "b")
    stable_v1(cp, a, b)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout={"min_healthy_time": "1h"})
    canary = latest(cp)["canary_node"]
    silence(cp, canary, time.time() - 3600)  # the canary's node goes silent for an hour
    cp.liveness.started_at = time.time() - 7200
    cp.passes.reconcile()  # the slot moves to b…
    cp.passes.reconcile()  # …and the rollout follows it, with a fresh deadline
    r = latest(cp)
    assert r["status"] in ("canary", "verifying")  # placed again, not failed
    assert r["canary_node"] != canary


def test_a_pass_says_when_the_canarys_health_wait_ends(cp: ControlPlane) -> None:
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout={"min_healthy_time": "3s"})
    step(cp, a)  # the canary runs: the gate waits 3 s from its start
    (canary,) = cp.store.query(
        "SELECT finished_at FROM tasks WHERE app = 'web' AND revision = 2 AND status = 'done'"
    )
    started = canary["finished_at"]  # these simulated containers say no start time
    done = cp.passes.run(None)
    assert done.wake_at == started + 3  # the controller takes its pass then, not 2 s later
    assert latest(cp)["status"] == "verifying"
