"""`stable` means the old revision no longer runs, as a Swarm or Nomad user reads it.

A real control plane (SQLite, Git) and simulated agents that carry out their
tasks only when a test says so: the moment a rollout is called stable, no
container of the previous revision may still run.
"""

from __future__ import annotations

from test_rollout import FAST, latest, running, stable_v1, step
from test_scheduler import Agent, put_app

from docklet.cp.service.controlplane import ControlPlane


def statuses(cp: ControlPlane) -> dict[str, str]:
    return {h["revision"]: h["status"] for h in cp.views.revisions("web")}


def test_stable_is_said_once_the_old_revision_no_longer_runs(cp: ControlPlane) -> None:
    a, b = Agent(cp, "a"), Agent(cp, "b")
    stable_v1(cp, a, b, replicas=3)
    put_app(cp, "web", replicas=3, image="nginx:1.27", rollout=FAST)
    seen = []
    for _ in range(12):
        step(cp, a, b)
        seen.append(latest(cp)["status"])
        if seen[-1] == "stable":
            break
    assert seen[-1] == "stable", seen
    assert sorted([*running(a).values(), *running(b).values()]) == [2, 2, 2]


def test_a_scale_down_with_a_new_image_is_stable_once_the_extra_replicas_are_gone(
    cp: ControlPlane,
) -> None:
    a, b = Agent(cp, "a"), Agent(cp, "b")
    stable_v1(cp, a, b, replicas=3)
    put_app(cp, "web", replicas=1, image="nginx:1.27", rollout=FAST)
    for _ in range(8):
        step(cp, a, b)
        if latest(cp)["status"] == "stable":
            break
    assert latest(cp)["status"] == "stable"
    assert [*running(a).values(), *running(b).values()] == [2]


def test_while_the_old_ones_stop_the_rollout_says_every_replica_is_done(
    cp: ControlPlane,
) -> None:
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=FAST)
    for _ in range(8):
        a.work()
        a.heartbeat()
        cp.passes.reconcile()
        r = latest(cp)
        if r["status"] == "promoting" and r["done"] == r["total"]:
            break
    assert (r["status"], r["done"], r["total"]) == ("promoting", 2, 2)
    assert 1 in running(a).values()  # its stop is queued, not done
    assert statuses(cp) == {"v2": "stable", "v1": "replaced"}  # verified: v2 is what runs now
    assert cp.views.app("web")["running_revision"] == "v2"


def test_an_old_container_that_never_stops_does_not_fail_a_verified_rollout(
    cp: ControlPlane,
) -> None:
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=FAST)
    for _ in range(8):
        a.work()
        a.heartbeat()
        cp.passes.reconcile()
        if latest(cp)["done"] == 2:
            break
    # Its stops never come back, and the rollout's progress deadline passes.
    with cp.store.write() as db:
        db.execute("UPDATE rollouts SET progress_deadline = 0")
    cp.passes.reconcile()
    assert latest(cp)["status"] == "stable"
    assert statuses(cp) == {"v2": "stable", "v1": "replaced"}


def test_a_newer_revision_while_the_old_ones_stop_starts_from_the_verified_one(
    cp: ControlPlane,
) -> None:
    a = Agent(cp, "a")
    stable_v1(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=FAST)
    for _ in range(8):
        a.work()
        a.heartbeat()
        cp.passes.reconcile()
        if latest(cp)["done"] == 2:
            break
    put_app(cp, "web", replicas=2, image="nginx:1.28", rollout=FAST)
    second, first = cp.views.rollouts("web")[:2]
    assert first["status"] == "stable"
    assert (second["from_revision"], second["revision"]) == ("v2", "v3")
    for _ in range(10):
        step(cp, a)
    assert latest(cp)["status"] == "stable"
    assert sorted(running(a).values()) == [3, 3]


def test_a_stop_first_deploy_is_stable_at_its_report_not_at_the_next_heartbeat(
    cp: ControlPlane,
) -> None:
    # A published host port: the new container replaces the old one (stop-first). The
    # deploy's report says it stopped what it replaced: the rollout is stable at once,
    # with no heartbeat to wait for and no stop task to send after it.
    a = Agent(cp, "a")
    stable_v1(cp, a, replicas=1, ports=["8080:80"])
    put_app(cp, "web", replicas=1, image="nginx:1.27", rollout=FAST, ports=["8080:80"])
    (deploy,) = a.work()  # reports, and no heartbeat
    assert deploy["kind"] == "deploy" and deploy["payload"]["replaces"]
    cp.passes.reconcile()  # verified, promoted
    cp.passes.reconcile()  # and the old one is known stopped
    assert latest(cp)["status"] == "stable"
    assert [t["kind"] for t in a.work()] == ["remove"]  # no stop: it was stopped already
    assert list(running(a).values()) == [2]
