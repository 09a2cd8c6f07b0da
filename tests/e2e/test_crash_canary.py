"""Crashing canaries on three Docker engines under CPU load: none is promoted.

Each app runs a good revision on three engines (one agent each), then is
updated to one whose container exits 1 after a second; Docker restarts it
(`unless-stopped`), so between two heartbeats it is usually running again. A
sample that catches it running must not pass the health gate: the restart
count, start and finish times Docker keeps outlive any sample. Every app's
rollout fails in its canary phase, and every reason names the exit code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import dockerlab
import pytest
from conftest import BIN, RUN_ID, Cluster, Process, wait_for

pytestmark = pytest.mark.docker

APPS = 20
CRASH = {"command": ["sh", "-c", "sleep 1; exit 1"]}  # restarted by Docker: unless-stopped
ROLLOUT = {"min_healthy_time": "8s"}
TERMINAL = {"stable", "rolled_back", "rollback_failed", "failed", "superseded"}
HEARTBEAT = 1.0  # seconds
LOAD_SECONDS = 240  # the busy loops end by themselves, should the test not stop them


@contextmanager
def extra_engines(count: int) -> Iterator[list[dockerlab.ExtraEngine]]:
    """`count` more Docker engines on this machine, each with its own bridge, removed after."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("more Docker engines need root, unshare and ip")
    engines = []
    try:
        for i in range(count):
            # Short paths and names: a socket path stays under 108 bytes, a bridge under 16.
            engine = dockerlab.ExtraEngine(
                Path(f"/tmp/dkc{i}-{RUN_ID}"),
                f"cc{RUN_ID[:6]}{i}",
                100 + (int(RUN_ID[:2], 16) + i) % 100,
            )
            engines.append(engine)
            engine.start()
        yield engines
    finally:
        for engine in engines:
            engine.stop()


@contextmanager
def cpu_load(processes: int) -> Iterator[None]:
    """Busy loops on every core, bounded in time, stopped on the way out."""
    loop = (
        f"import time\nend = time.monotonic() + {LOAD_SECONDS}\nwhile time.monotonic() < end: pass"
    )
    busy = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(processes)]
    try:
        yield
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()


@pytest.fixture
def calm_cluster(tmp_path: Path, docker_client: Any, web_image: str) -> Iterator[Cluster]:
    """The CP and node-1, with heartbeats every second (offline after 6 s, not 3 s): under
    this load an agent can be late by seconds, and a node that goes offline moves its
    canary, which tests the scheduler's patience rather than the gate."""
    c = Cluster(tmp_path, docker_client)
    args = c.cp.args
    args[args.index("--heartbeat-interval") + 1] = str(HEARTBEAT)
    try:
        c.start_cp()
        c.start_agent()
        if not c.client.token:  # the first `docklet` command's login, after the first agent
            c.client.token = c.client.post("/api/auth/bootstrap", {"name": "test"})["token"]
        yield c
    finally:
        c.close()


def agent_for(cluster: Cluster, engine: dockerlab.ExtraEngine, name: str, tmp: Path) -> Process:
    return Process(
        [str(BIN / "docklet-agent")],
        tmp / f"{name}.log",
        env={
            "DOCKLET_CP": cluster.url,
            "DOCKLET_NODE_NAME": name,
            "DOCKER_HOST": engine.url,
            "DOCKLET_JOIN_TOKEN": cluster.join_token(),
            "DOCKLET_STATE_DIR": str(tmp / f"{name}-state"),
        },
    )


def all_stable(cluster: Cluster, names: list[str]) -> bool:
    """Every app's v1 verified (a rollout only canaries over a stable revision)."""
    return all(
        cluster.client.get(f"/api/apps/{n}/revisions")[-1]["status"] == "stable" for n in names
    )


def verdicts(cluster: Cluster, names: list[str]) -> dict[str, dict[str, Any]] | None:
    """Each app's rollout of v2, once every one has ended."""
    latest = {n: cluster.client.get(f"/api/apps/{n}/rollouts")[0] for n in names}
    if all(r["revision"] == "v2" and r["status"] in TERMINAL for r in latest.values()):
        return latest
    return None


def wrong(cluster: Cluster, name: str, r: dict[str, Any]) -> list[str]:
    """What is wrong with one app's verdict on its crashing canary ([] when nothing)."""
    problems = []
    if r["status"] != "rolled_back" or r["failed_phase"] not in ("canary", "verifying"):
        problems.append(f"{r['status']} in phase {r['failed_phase']}")
    if "code 1" not in (r["reason"] or ""):
        problems.append(f"reason without the exit code: {r['reason']!r}")
    events = cluster.client.get(f"/api/events?app={name}&limit=1000")
    promoted = [e["message"] for e in events if "→ promoting" in e["message"]]
    if promoted:
        problems.append(f"promoted: {promoted}")
    return problems


def test_crashing_canaries_on_three_engines_under_load_are_never_promoted(
    calm_cluster: Cluster, registry: str, web_image: str, docker_client: Any, tmp_path: Path
) -> None:
    cluster, began = calm_cluster, time.monotonic()
    ref = dockerlab.push_to_registry(docker_client, web_image, "docklet-test/crash", RUN_ID)
    names = [f"crash{i}" for i in range(APPS)]
    mine = {"label": f"docklet.cluster={cluster.cluster_id}"}
    with ExitStack() as stack:
        engines = stack.enter_context(extra_engines(2))
        others = [engine.client() for engine in engines]
        stack.callback(cleanup, others, mine, ref, docker_client)
        for i, engine in enumerate(engines, start=2):
            agent = agent_for(cluster, engine, f"node-{i}", tmp_path)
            stack.callback(agent.stop)
            agent.start()
            wait_for(lambda i=i: cluster.node_online(f"node-{i}"), 30, f"node-{i} online")
        for name in names:
            spec = {"name": name, "image": ref, "replicas": 3, "rollout": ROLLOUT}
            cluster.client.post("/api/apps", spec)
        wait_for(lambda: all_stable(cluster, names), 90, "every app's v1 to be stable")
        started = time.monotonic()
        with cpu_load(os.cpu_count() or 2):
            for name in names:
                cluster.client.post(f"/api/apps/{name}/update", CRASH)
            ended = wait_for(lambda: verdicts(cluster, names), 150, "every rollout to end")
        took = time.monotonic() - started
        problems = {n: wrong(cluster, n, r) for n, r in ended.items()}
        # What a run measured, shown with pytest -s (and in the report of a failure).
        said = sorted({re.sub(r"\d+ times?", "N times", r["reason"] or "") for r in ended.values()})
        set_up = started - began
        print(f"\n{APPS} crashing canaries, 3 engines, CPU load: all ended in {took:.0f}s")
        events = cluster.client.get("/api/events?limit=5000")
        offline = sum(e["kind"] == "node_offline" for e in events)
        print(f"(set-up {set_up:.0f}s, nodes gone offline {offline} times); reasons: {said}")
        assert {n: p for n, p in problems.items() if p} == {}, f"after {took:.0f}s"


def cleanup(others: list[Any], mine: dict[str, str], ref: str, docker_client: Any) -> None:
    for other in others:
        for c in other.containers.list(ignore_removed=True, all=True, filters=mine):
            c.remove(force=True)
        dockerlab.remove_image(other, ref)
    dockerlab.remove_image(docker_client, ref)
