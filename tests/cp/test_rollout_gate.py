"""The health gate judges a canary by Docker's evidence, not by where samples fall.

A real control plane (SQLite, Git) and a simulated agent whose samples carry
what a real one reports: a list row's part at every heartbeat, and, when it
inspected the container, its start and finish times, restart count and when
it read them. Docker's own times are what a crash cannot erase.
"""

from __future__ import annotations

import time
from typing import Any

from test_rollout import latest, running, stable_v1
from test_scheduler import Agent, put_app

from docklet.cp.reconcile.gate import exit_reason
from docklet.cp.service.controlplane import ControlPlane

NOT_INSPECTED = dict.fromkeys(
    ("started_at", "finished_at", "last_exit_code", "last_run", "inspected_at")
)


def canary(agent: Agent, revision: str = "2") -> str:
    (name,) = [
        n for n, c in agent.containers.items() if c["labels"]["docklet.revision"] == revision
    ]
    return name


def sample(agent: Agent, name: str, **fields: Any) -> None:
    """The agent's next heartbeat says this of the container (the rest as last time)."""
    agent.containers[name] = {**agent.containers[name], **fields}
    agent.heartbeat()


def update_to_v2(cp: ControlPlane, agent: Agent, min_healthy_time: str) -> str:
    """v1 stable, then v2's canary deployed and reported; its container's name."""
    stable_v1(cp, agent)
    put_app(
        cp, "web", replicas=2, image="nginx:1.27", rollout={"min_healthy_time": min_healthy_time}
    )
    agent.work()
    return canary(agent)


def promoted(cp: ControlPlane) -> bool:
    kinds = [e["message"] for e in cp.views.events("web", 200) if e["kind"] == "rollout"]
    return any("→ promoting" in k for k in kinds)


def test_a_canary_docker_restarted_between_samples_fails_with_its_exit_code(
    cp: ControlPlane,
) -> None:
    a = Agent(cp, "a")
    name = update_to_v2(cp, a, "8s")
    now = time.time()
    sample(a, name, started_at=now - 12, restarts=0, inspected_at=now - 12)
    # Every sample finds it running; the inspect says Docker restarted it three times.
    restarted = {"started_at": now - 0.5, "finished_at": now - 0.6, "restarts": 3}
    sample(a, name, **restarted, last_exit_code=1, last_run=1.2, inspected_at=now)
    cp.passes.reconcile()
    r = latest(cp)
    assert r["status"] in ("rolling_back", "rolled_back") and r["failed_phase"] == "canary"
    assert r["reason"] == "exited with code 1 after 1s, restarted 3 times"
    assert r["evidence"]["exit_code"] == 1
    assert not promoted(cp)


def test_a_sample_without_an_inspect_does_not_erase_a_restart(cp: ControlPlane) -> None:
    a = Agent(cp, "a")
    name = update_to_v2(cp, a, "0s")
    now = time.time()
    sample(a, name, started_at=now - 5, restarts=0, inspected_at=now - 5)
    sample(a, name, started_at=now - 1, finished_at=now - 1.1, restarts=2, inspected_at=now - 1)
    # The next heartbeat had no time left to inspect it: a list row's part only.
    sample(a, name, **NOT_INSPECTED, restarts=0)
    cp.passes.reconcile()
    r = latest(cp)
    assert r["failed_phase"] == "canary" and not promoted(cp)
    assert r["reason"] == "exited (exit code not known), restarted 2 times"


def test_a_start_later_than_the_run_began_fails_though_docker_counted_no_restart(
    cp: ControlPlane,
) -> None:
    a = Agent(cp, "a")
    name = update_to_v2(cp, a, "5s")
    now = time.time()
    sample(a, name, started_at=now - 20, restarts=0, inspected_at=now - 20)
    # `docker restart` by hand: a new start, a finish, and Docker's count unchanged.
    again = {"started_at": now - 10, "finished_at": now - 11, "last_exit_code": 137}
    sample(a, name, **again, last_run=9.0, restarts=0, inspected_at=now)
    cp.passes.reconcile()
    assert latest(cp)["reason"] == "exited with code 137 after 9s"
    assert not promoted(cp)


def test_the_gate_passes_only_on_an_inspect_taken_after_its_window(cp: ControlPlane) -> None:
    a = Agent(cp, "a")
    name = update_to_v2(cp, a, "5s")
    now = time.time()
    # Read a second after its start, and trusted since: it proves nothing about the
    # seconds after (a crash then would show in the next inspect, not in this one).
    sample(a, name, started_at=now - 10, restarts=0, inspected_at=now - 9)
    cp.passes.reconcile()
    assert latest(cp)["status"] == "verifying" and not promoted(cp)
    sample(a, name, inspected_at=now)  # inspected again: the same start, no restart
    cp.passes.reconcile()
    assert promoted(cp)


def test_a_rollback_is_not_held_up_by_an_old_restart_of_the_old_revision(
    cp: ControlPlane,
) -> None:
    a = Agent(cp, "a")
    stable_v1(cp, a)
    now = time.time()
    for name in list(a.containers):  # each v1 container crashed once, an hour ago
        sample(a, name, started_at=now - 7200, restarts=0, inspected_at=now - 7200)
        again = {"started_at": now - 3600, "finished_at": now - 3601, "restarts": 1}
        sample(a, name, **again, last_exit_code=1, last_run=3599.0, inspected_at=now)
    before = running(a)
    put_app(cp, "web", replicas=2, image="nginx:does-not-exist", rollout={"min_healthy_time": "0s"})
    a.work(fail="pull nginx:does-not-exist: manifest unknown")
    cp.passes.reconcile()
    a.work()
    a.heartbeat()
    cp.passes.reconcile()
    assert latest(cp)["status"] == "rolled_back"
    assert running(a) == before


def test_the_reason_says_the_code_the_time_and_the_restarts() -> None:
    assert exit_reason(1, 1.2, 3) == "exited with code 1 after 1s, restarted 3 times"
    assert exit_reason(3, 2.0, 0) == "exited with code 3 after 2s"
    assert exit_reason(None, None, 1) == "exited (exit code not known), restarted 1 time"
