"""Rollout edge cases found in review: each once wedged, looped or misreported an app."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from test_rollout import FAST, latest, running, stable_v1, step
from test_scheduler import Agent, delete_app, go_offline, open_tasks, placements, put_app

from docklet.cp.reconcile import scheduler
from docklet.cp.service.controlplane import ControlPlane


def errors(cp: ControlPlane) -> Any:
    return cp.store.one("SELECT last_error FROM apps WHERE name='web'")["last_error"]


def hist(cp: ControlPlane) -> dict[str, str]:
    return {h["revision"]: h["status"] for h in cp.views.revisions("web")}


def tasks_of(cp: ControlPlane) -> list[dict[str, Any]]:
    return cp.store.query("SELECT * FROM tasks WHERE app = 'web' ORDER BY id")


NO_REVERT = {**FAST, "auto_revert": False}


def failed_in_promotion(cp: ControlPlane, a: Agent) -> None:
    """v1 stable, then v2 (auto_revert: false) whose canary passes and whose slot-2
    deploy Docker refuses: the rollout ends `failed`, nothing reverted."""
    put_app(cp, "web", replicas=2, rollout=NO_REVERT)
    step(cp, a)
    step(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=NO_REVERT)
    step(cp, a)  # canary runs
    step(cp, a)  # verified -> promoting, slot 2 moved
    # slot 2's v2 deploy is refused by docker
    a.work(fail="boom")
    a.heartbeat()
    cp.passes.reconcile()


def test_failed_no_revert_then_rollback_to_v1(cp):
    a = Agent(cp, "a")
    failed_in_promotion(cp, a)
    r = latest(cp)
    assert r["status"] == "failed"
    cp.apps.rollback("web", 1, "x <x@y>")
    for _ in range(3):
        step(cp, a)
    assert errors(cp) is None
    assert sorted(running(a).values()) in ([3, 3], [1, 1])


# 2. stopping the app mid-rollout fails the new revision


def test_stop_mid_rollout(cp):
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout={"min_healthy_time": "1h"})
    step(cp, a)
    assert latest(cp)["status"] == "verifying"
    put_app(
        cp,
        "web",
        replicas=2,
        image="nginx:1.27",
        rollout={"min_healthy_time": "1h"},
        state="stopped",
    )
    for _ in range(3):
        step(cp, a)
    assert hist(cp)["v2"] != "failed"


# 3. retry of a failed (docker-refused) revision re-fails at once without a new deploy


def test_retry_failed(cp):
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:bad", rollout=FAST)
    step(cp, a, fail="manifest unknown")
    step(cp, a)
    assert latest(cp)["status"] == "rolled_back"
    cp.apps.retry("web")
    assert open_tasks(cp, "web") == [("deploy", 1, "a")]


# 4. a rollback to a spec that ran stable is not held for an older failure of it


def test_rollback_held(cp):
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:x", rollout=FAST)
    step(cp, a, fail="registry down")
    step(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:x", rollout=FAST, labels={"t": "1"})  # v3 held
    cp.apps.retry("web")
    for _ in range(5):
        step(cp, a)
    assert hist(cp)["v3"] == "stable"
    put_app(cp, "web", replicas=2, image="nginx:y", rollout=FAST)  # v4
    for _ in range(5):
        step(cp, a)
    assert hist(cp)["v4"] == "stable"
    cp.apps.rollback("web", None, "x <x@y>")  # back to v3 -> v5
    assert hist(cp)["v5"] != "held"


# 5. auto_revert: false -> what does the view say, and what's left of v1?


def test_failed_no_revert_view(cp):
    a = Agent(cp, "a")
    failed_in_promotion(cp, a)
    for _ in range(3):
        step(cp, a)
    v = cp.views.app("web")
    assert not (v["status"] == "stable" and v["revision"] == "v1" and 1 not in running(a).values())


# 6. retry: next pass


def test_retry_failed_next_pass(cp):
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:bad", rollout=FAST)
    step(cp, a, fail="manifest unknown")
    step(cp, a)
    cp.apps.retry("web")
    step(cp, a)
    assert latest(cp)["status"] not in ("rolling_back", "rolled_back")


# 7. stop mid-rollout then start again: v2 never rolled out


def test_stop_start_mid_rollout(cp):
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=FAST | {"min_healthy_time": "1h"})
    step(cp, a)
    put_app(
        cp,
        "web",
        replicas=2,
        image="nginx:1.27",
        rollout=FAST | {"min_healthy_time": "1h"},
        state="stopped",
    )
    for _ in range(3):
        step(cp, a)
    put_app(
        cp,
        "web",
        replicas=2,
        image="nginx:1.27",
        rollout=FAST | {"min_healthy_time": "1h"},
        state="running",
    )
    for _ in range(3):
        step(cp, a)
    v = cp.views.app("web")
    assert v["running_revision"] == "v2" or latest(cp)["status"] not in (
        "rolled_back",
        "rollback_failed",
    )


# 1b. auto_revert false, failure in promotion, then a fixed image is pushed


def test_failed_no_revert_then_fix(cp):
    a = Agent(cp, "a")
    failed_in_promotion(cp, a)
    assert latest(cp)["status"] == "failed"
    put_app(cp, "web", replicas=2, image="nginx:1.28", rollout=NO_REVERT)
    for _ in range(5):
        step(cp, a)
    assert errors(cp) is None and sorted(running(a).values()) == [3, 3]


def test_rollback_not_exact(cp):
    a = Agent(cp, "a")
    stable_v1(cp, a)
    with cp.store.write() as db:
        db.execute(
            "UPDATE revisions SET image_digest = 'nginx@sha256:' || hex(randomblob(32))"
            " WHERE number = 1"
        )
    d1 = cp.views.revisions("web")[0]["image_digest"]
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=FAST)
    for _ in range(5):
        step(cp, a)
    assert hist(cp)["v2"] == "stable"
    cp.apps.rollback("web", None, "x <x@y>")
    r = latest(cp)
    print("rollback rollout", r["status"])
    step(cp, a)
    deploys = [
        json.loads(t["payload"])["image"]
        for t in tasks_of(cp)
        if t["revision"] == 3 and t["kind"] == "deploy"
    ]
    assert deploys and all(d == d1 for d in deploys)


def test_scale_up_with_image(cp):
    a, b = Agent(cp, "a"), Agent(cp, "b")
    stable_v1(cp, a, b)
    put_app(cp, "web", replicas=3, image="nginx:1.27", rollout=FAST)
    for _ in range(8):
        step(cp, a, b)
    assert latest(cp)["status"] == "stable"
    assert sorted(list(running(a).values()) + list(running(b).values())) == [2, 2, 2]


def test_scale_down_with_image(cp):
    a, b = Agent(cp, "a"), Agent(cp, "b")
    stable_v1(cp, a, b, replicas=3)
    put_app(cp, "web", replicas=1, image="nginx:1.27", rollout=FAST)
    for _ in range(8):
        step(cp, a, b)
    assert latest(cp)["status"] == "stable"
    assert sorted(list(running(a).values()) + list(running(b).values())) == [2]


def test_scale_up_fail_rollback(cp):
    a, b = Agent(cp, "a"), Agent(cp, "b")
    stable_v1(cp, a, b)
    put_app(cp, "web", replicas=3, image="nginx:1.27", rollout=FAST)
    step(cp, a, b)
    step(cp, a, b)
    # now promoting; fail everything
    step(cp, a, b, fail="nope")
    for _ in range(4):
        step(cp, a, b)
    assert latest(cp)["status"] == "rolled_back"
    assert sorted(list(running(a).values()) + list(running(b).values())) == [1, 1]


def test_supersede_twice(cp):
    a = Agent(cp, "a")
    stable_v1(cp, a)
    slow = {"min_healthy_time": "1h"}
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=slow)
    step(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.28", rollout=slow)
    step(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.29", rollout=FAST)
    for _ in range(6):
        step(cp, a)
    assert sorted(running(a).values()) == [4, 4] and len(a.containers) == 2


def test_placement_nodes_change(cp):
    a = Agent(cp, "a")
    stable_v1(cp, a, replicas=2)
    b = Agent(cp, "b")
    b.heartbeat()
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=FAST, placement={"nodes": ["b"]})
    ot = open_tasks(cp, "web")
    print("after put", ot, latest(cp)["canary_node"])
    assert len([t for t in ot if t[0] == "deploy"]) == 1
    for _ in range(8):
        step(cp, a, b)
    assert (
        latest(cp)["status"] == "stable"
        and sorted(running(b).values()) == [2, 2]
        and running(a) == {}
    )


def test_remove_mid_rollout(cp):
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout={"min_healthy_time": "1h"})
    step(cp, a)
    delete_app(cp, "web")
    for _ in range(4):
        step(cp, a)
    assert a.containers == {} and cp.views.apps() == []


def test_rollback_no_earlier(cp):
    a = Agent(cp, "a")
    stable_v1(cp, a)
    from docklet.common.errors import Conflict

    with pytest.raises(Conflict):
        cp.apps.rollback("web", None, "x <x@y>")
    with pytest.raises(Conflict):
        cp.apps.retry("web")


def test_stopfirst_rollback_delay(cp):
    a = Agent(cp, "a")
    stable_v1(cp, a, replicas=1, ports=["8080:80"])
    hc = {"test": ["x"], "interval": "1s"}
    put_app(
        cp, "web", replicas=1, ports=["8080:80"], image="nginx:1.27", rollout=FAST, healthcheck=hc
    )
    a.work()
    for c in a.containers.values():
        if c["labels"]["docklet.revision"] == "2":
            c.update(health="unhealthy", health_log="500")
    a.heartbeat()
    cp.passes.reconcile()
    step(cp, a)
    step(cp, a)
    with cp.store.write() as db:
        db.execute("UPDATE containers SET down_since = down_since - 31")
    step(cp, a)
    step(cp, a)
    assert 1 in running(a).values()


def test_remove_then_readd_mid_rollout(cp):
    a = Agent(cp, "a")
    stable_v1(cp, a)
    slow = {"min_healthy_time": "1h"}
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=slow)
    step(cp, a)
    delete_app(cp, "web")
    a.work()  # removals done, but no heartbeat yet
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=slow)
    for _ in range(3):
        step(cp, a)
    assert hist(cp)["v2"] != "failed"


def restart(cp, config, agents, last_pass_ago=100):
    with cp.store.write() as db:
        db.execute(
            "UPDATE meta SET value = ? WHERE key = 'last_pass_at'",
            (repr(time.time() - last_pass_ago),),
        )
    cp.store.close()
    new = ControlPlane(config)
    for a in agents:
        a.cp = new
    return new


@pytest.mark.parametrize("phase", ["canary", "verifying", "promoting", "rolling_back"])
def test_restart_in_phase(cp, config, phase):
    a = Agent(cp, "a")
    stable_v1(cp, a)
    hc = {"test": ["x"], "interval": "1s"}
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=FAST, healthcheck=hc)
    bad = phase == "rolling_back"
    for _ in range(6):
        if latest(cp)["status"] == phase:
            break
        a.work()
        for c in a.containers.values():
            if c["labels"]["docklet.revision"] == "2" and c["health"] is None:
                c["health"] = (
                    "unhealthy" if bad else ("starting" if phase == "verifying" else "healthy")
                )
        a.heartbeat()
        cp.passes.reconcile()
    assert latest(cp)["status"] == phase
    cp = restart(cp, config, [a])
    try:
        for _ in range(8):
            a.work()
            for c in a.containers.values():
                if c["labels"]["docklet.revision"] == "2" and c["health"] in (None, "starting"):
                    c["health"] = "healthy"
            a.heartbeat()
            cp.passes.reconcile()
        r = latest(cp)
        assert r["status"] == ("rolled_back" if bad else "stable")
    finally:
        cp.store.close()


def test_repeated_restart_adds_downtime_twice(cp, config):
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout={"min_healthy_time": "1h"})
    d0 = latest(cp)["deadline"]
    cp = restart(cp, config, [a], last_pass_ago=100)  # +100
    cp.views.rollouts("web")[0]["deadline"]
    cp.store.close()
    cp = ControlPlane(config)  # restarted again before any pass
    d2 = cp.views.rollouts("web")[0]["deadline"]
    cp.store.close()
    assert d2 - d0 < 150


def test_single_node_lost_in_canary_fails_revision(cp):
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(
        cp,
        "web",
        replicas=2,
        image="nginx:1.27",
        rollout={"min_healthy_time": "1h", "healthy_deadline": "30s"},
    )
    go_offline(cp, "a")
    scheduler.reconcile(
        cp.store, cp.config, now=time.time() + 31, started_at=cp.liveness.started_at
    )
    latest(cp)
    assert hist(cp)["v2"] != "failed"


def test_stopped_app_new_revision_history(cp):
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, rollout=FAST, state="stopped")
    step(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=FAST, state="stopped")
    step(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=FAST, state="running")
    for _ in range(3):
        step(cp, a)
    cp.views.app("web")
    assert list(hist(cp).values()).count("stable") == 1


def test_node_lost_mid_promotion(cp):
    a, b = Agent(cp, "a"), Agent(cp, "b")
    stable_v1(cp, a, b)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=FAST)
    step(cp, a, b)
    step(cp, a, b)
    r = latest(cp)
    print(r["status"], placements(cp, "web"), open_tasks(cp, "web"))
    assert r["status"] == "promoting"
    lost = next(n for k, s, n in open_tasks(cp, "web") if k == "deploy")
    go_offline(cp, lost)
    keep = a if lost == "b" else b
    for _ in range(5):
        keep.work()
        keep.heartbeat()
        cp.passes.reconcile()
    r = latest(cp)
    print(r["status"], placements(cp, "web"), running(keep))
    assert r["status"] == "stable"


def test_promote_replacement_gets_no_fresh_deadline(cp):
    a, b = Agent(cp, "a"), Agent(cp, "b")
    stable_v1(cp, a, b)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=FAST)
    step(cp, a, b)
    step(cp, a, b)
    assert latest(cp)["status"] == "promoting"
    lost = next(n for k, _, n in open_tasks(cp, "web") if k == "deploy")
    # most of the healthy deadline went by waiting on the lost node
    with cp.store.write() as db:
        db.execute(
            "UPDATE rollouts SET deadline = ? WHERE status='promoting'", (time.time() + 0.3,)
        )
    go_offline(cp, lost)
    cp.passes.reconcile()  # re-placed on the other node
    time.sleep(0.4)
    cp.passes.reconcile()  # the new node has not deployed yet
    r = latest(cp)
    print(r["status"], r["reason"])
    assert r["status"] == "promoting"


def test_view_while_rolling_back(cp):
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=FAST | {"healthy_deadline": "1h"})
    step(cp, a)
    step(cp, a)
    a.work(fail="x")
    a.heartbeat()
    cp.passes.reconcile()
    cp.views.app("web")
