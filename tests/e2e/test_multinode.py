"""Two nodes for real: a second Docker engine on this machine, with its own agent."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dockerlab
import pytest
from conftest import BIN, RUN_ID, Cluster, Process, wait_for

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def second_engine(docker_client: Any) -> Iterator[dockerlab.ExtraEngine]:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("a second Docker engine needs root, unshare and ip")
    # Short path: a unix socket path must stay under 108 bytes.
    engine = dockerlab.ExtraEngine(
        Path(f"/tmp/dkl-{RUN_ID}"), f"dk{RUN_ID[:6]}", int(RUN_ID[:2], 16)
    )
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()


def node_2_agent(cluster: Cluster, engine: dockerlab.ExtraEngine, tmp_path: Path) -> Process:
    """An agent for the second engine, joining with the cluster's join token."""
    return Process(
        [str(BIN / "docklet-agent")],
        tmp_path / "agent2.log",
        env={
            "DOCKLET_CP": cluster.url,
            "DOCKLET_NODE_NAME": "node-2",
            "DOCKER_HOST": engine.url,
            "DOCKLET_JOIN_TOKEN": cluster.join_token(),
            # Its own node token, not the first agent's (they share the CP's URL).
            "DOCKLET_STATE_DIR": str(tmp_path / "agent2-state"),
        },
    )


def test_replicas_spread_over_nodes_and_move_off_a_dead_one(
    cluster: Cluster,
    second_engine: dockerlab.ExtraEngine,
    registry: str,
    web_image: str,
    docker_client: Any,
    tmp_path: Path,
) -> None:
    ref = dockerlab.push_to_registry(docker_client, web_image, "docklet-test/multi", RUN_ID)
    other = second_engine.client()
    agent2 = node_2_agent(cluster, second_engine, tmp_path)
    on_node2 = {"label": f"docklet.cluster={cluster.cluster_id}"}
    try:
        agent2.start()
        wait_for(lambda: cluster.node_online("node-2"), 20, "node-2 to come online")

        result = cluster.docklet("run", ref, "--name", "spread", "--replicas", "2")
        assert result.returncode == 0, result.stderr
        assert "✔ Running on node-1, node-2 (2/2)" in result.stdout
        assert len(cluster.containers("spread")) == 1  # one on each engine
        assert len(other.containers.list(ignore_removed=True, filters=on_node2)) == 1
        row = cluster.docklet("ps").stdout.splitlines()[1].split()
        assert row[:5] == ["spread", "v1", "running", "running", "node-1,node-2"]

        # node-2 dies: its slot moves to node-1, and the app runs in full again.
        agent2.stop(signal.SIGKILL)
        wait_for(
            lambda: (
                cluster.app("spread")["nodes"] == ["node-1"]
                and cluster.app("spread")["running"] == 2
            ),
            30,
            "slot 2 to move to node-1",
        )
        nodes = {
            n["node_id"]: n["status"] for n in json.loads(cluster.docklet("nodes", "--json").stdout)
        }
        assert nodes == {"node-1": "online", "node-2": "offline"}
        assert sorted(c.name.rsplit(".", 1)[0] for c in cluster.containers("spread")) == [
            "docklet.spread.1",
            "docklet.spread.2",
        ]

        # node-2 comes back: what it still ran is removed, nothing moves back.
        agent2.start()
        wait_for(
            lambda: other.api.containers(all=True, filters=on_node2) == [],  # no inspect: no race
            30,
            "node-2's leftover container to be removed",
        )
        # The agent's report of the removal may still be on its way.
        wait_for(lambda: cluster.app("spread")["nodes"] == ["node-1"], 10, "node-2 to be empty")
        assert cluster.app("spread")["actual"] == "running"
    finally:
        agent2.stop()
        for c in other.containers.list(ignore_removed=True, all=True, filters=on_node2):
            c.remove(force=True)
        dockerlab.remove_image(other, ref)
        dockerlab.remove_image(docker_client, ref)


def test_a_canary_runs_on_exactly_one_node_as_one_task_then_promotes(
    cluster: Cluster,
    second_engine: dockerlab.ExtraEngine,
    registry: str,
    web_image: str,
    web_image_v2: str,
    docker_client: Any,
    tmp_path: Path,
) -> None:
    v1 = dockerlab.push_to_registry(docker_client, web_image, "docklet-test/canary", f"a{RUN_ID}")
    v2 = dockerlab.push_to_registry(
        docker_client, web_image_v2, "docklet-test/canary", f"b{RUN_ID}"
    )
    other = second_engine.client()
    agent2 = node_2_agent(cluster, second_engine, tmp_path)
    mine = {"label": f"docklet.cluster={cluster.cluster_id}"}
    try:
        agent2.start()
        wait_for(lambda: cluster.node_online("node-2"), 20, "node-2 to come online")
        spec = {"name": "canary", "image": v1, "replicas": 2, "rollout": {"min_healthy_time": "3s"}}
        cluster.client.post("/api/apps", spec)
        wait_for(
            lambda: any(
                h["status"] == "stable" for h in cluster.client.get("/api/apps/canary/revisions")
            ),
            60,
            "v1 to be stable on both nodes",
        )
        first_task = max(
            t["task_id"] or 0 for t in cluster.client.get("/api/events?app=canary&limit=1000")
        )
        cluster.client.post("/api/apps/canary/update", {"image": v2})
        rollouts = wait_for(
            lambda: [
                r
                for r in cluster.client.get("/api/apps/canary/rollouts")
                if r["status"] == "verifying"
            ],
            60,
            "the canary to run",
        )
        canary = rollouts[0]
        deploys = [
            e
            for e in cluster.client.get("/api/events?app=canary&limit=1000")
            if e["kind"] == "task_created" and (e["task_id"] or 0) > first_task
        ]
        assert len(deploys) == 1 and f"on {canary['canary_node']}" in deploys[0]["message"]
        done = wait_for(
            lambda: [
                r
                for r in cluster.client.get("/api/apps/canary/rollouts")
                if r["status"] == "stable"
            ],
            60,
            "the rollout to be stable",
        )
        assert done[0]["done"] == 2

        def revisions() -> list[str]:
            # One list call per engine (no inspect each): a container removed between
            # the list and an inspect would fail the look, not the test.
            return sorted(
                c["Labels"]["docklet.revision"]
                for engine in (docker_client, other)
                for c in engine.api.containers(all=True, filters=mine)
                if c["Labels"].get("docklet.app") == "canary"
            )

        # Once stable, the kept v1 containers are removed.
        wait_for(lambda: revisions() == ["2", "2"], 30, "only v2 containers to be left")
    finally:
        agent2.stop()
        for c in other.containers.list(ignore_removed=True, all=True, filters=mine):
            c.remove(force=True)
        for ref in (v1, v2):
            dockerlab.remove_image(other, ref)
            dockerlab.remove_image(docker_client, ref)
