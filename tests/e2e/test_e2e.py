"""End to end: the real CLI, CP and agent processes on the real Docker engine."""

from __future__ import annotations

import json
import signal
import urllib.request

import pytest
from conftest import Cluster, free_port, wait_for

pytestmark = pytest.mark.docker


def test_run_ps_crash_recovery_stop_rm(cluster: Cluster, web_image: str) -> None:
    port = free_port()
    result = cluster.docklet("run", web_image, "--name", "web", "-p", f"127.0.0.1:{port}:80")
    assert result.returncode == 0, result.stderr
    assert "✔ Creating deployment web\n✔ Task scheduled\n" in result.stdout
    assert "✔ Running on node-1 (1/1)" in result.stdout

    # Docker really runs it, labelled and named for its slot, and it serves.
    (container,) = cluster.containers("web")
    assert container.status == "running"
    assert container.name == f"docklet.web.1.{container.labels['docklet.spec-hash'][:8]}"
    assert container.labels["docklet.app"] == "web"
    assert container.labels["docklet.slot"] == "1"
    assert container.labels["docklet.revision"] == "1"
    assert container.labels["docklet.node"] == "node-1"
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
    assert web_image in page

    ps = cluster.docklet("ps")
    assert ps.returncode == 0
    header, row = ps.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "REVISION", "DESIRED", "ACTUAL", "NODE", "STATUS"]
    assert row.split() == ["web", "v1", "running", "running", "node-1", "stable"]
    app = cluster.app("web")
    assert app["instances"][0]["container_id"] == container.id

    # Killed behind Docklet's back: ps shows it is not running (desired ≠ actual).
    container.kill()
    wait_for(lambda: cluster.app("web")["actual"] == "stopped", 15, "ps to show web stopped")
    row = cluster.docklet("ps").stdout.splitlines()[1].split()
    assert row[2:4] == ["running", "stopped"]

    # An agent restart recovers it, with the same container: no duplicate.
    cluster.agent.stop()
    cluster.start_agent()
    wait_for(lambda: cluster.app("web")["actual"] == "running", 20, "web to run again")
    (again,) = cluster.containers("web")
    assert again.id == container.id

    # A CP restart keeps apps, revisions, nodes and instances.
    cluster.cp.stop()
    cluster.start_cp()
    assert cluster.app("web")["revision"] == "v1"
    assert cluster.app("web")["instances"][0]["container_id"] == container.id
    revisions = json.loads(cluster.docklet("ps", "--json").stdout)
    assert revisions[0]["name"] == "web"
    wait_for(lambda: cluster.node_online("node-1"), 10, "node-1 online after CP restart")
    assert cluster.app("web")["actual"] == "running"

    # stop: containers really stop but stay; rm: they are gone, and so is the app.
    assert cluster.docklet("stop", "web").returncode == 0
    wait_for(lambda: cluster.app("web")["actual"] == "stopped", 30, "web to stop")
    (stopped,) = cluster.containers("web")
    assert stopped.status == "exited"
    assert cluster.docklet("rm", "web").returncode == 0
    wait_for(lambda: cluster.app("web") is None, 30, "web to be removed")
    assert cluster.containers("web") == []


def test_image_that_does_not_exist_fails_the_task_not_the_system(
    cluster: Cluster, registry: str, web_image: str
) -> None:
    missing = f"{registry}/docklet-test/nope:missing-{cluster.port}"
    result = cluster.docklet("run", missing, "--name", "broken")
    assert result.returncode == 1
    assert "Deploy failed on node-1" in result.stderr
    assert "manifest unknown" in result.stderr or "not found" in result.stderr

    app = cluster.app("broken")
    assert app["actual"] == "failed"
    assert app["errors"][0]["node_id"] == "node-1"
    ps = cluster.docklet("ps")
    assert "broken" in ps.stdout and "failed" in ps.stdout
    assert "nope:missing" in ps.stdout  # Docker's error text, shown to the user
    assert cluster.containers("broken") == []

    # The CP and the agent are fine: the next deploy works.
    assert cluster.client.get("/api/health") == {"status": "ok"}
    assert cluster.node_online("node-1")
    ok = cluster.docklet("run", web_image, "--name", "fine")
    assert ok.returncode == 0, ok.stderr


def test_pull_always_pulls_from_the_registry(
    cluster: Cluster, registry: str, web_image: str, docker_client
) -> None:
    import dockerlab

    tag = cluster.cluster_id
    ref = dockerlab.push_to_registry(docker_client, web_image, "docklet-test/web", tag)
    dockerlab.remove_image(docker_client, ref)  # only the registry has it now
    try:
        created = cluster.client.post(
            "/api/apps", {"name": "pulled", "image": ref, "pull": "always"}
        )
        assert created["tasks"]
        wait_for(lambda: cluster.app("pulled")["actual"] == "running", 30, "pulled to run")
        assert docker_client.images.get(ref)  # the agent really pulled it
    finally:
        for c in cluster.containers("pulled"):
            c.remove(force=True)
        dockerlab.remove_image(docker_client, ref)


def test_agent_killed_mid_run_does_not_duplicate(cluster: Cluster, web_image: str) -> None:
    created = cluster.client.post("/api/apps", {"name": "twice", "image": web_image, "replicas": 2})
    assert len(created["tasks"]) == 2
    wait_for(lambda: cluster.app("twice")["actual"] == "running", 20, "twice to run")
    cluster.agent.stop(signal.SIGKILL)
    cluster.start_agent()
    cluster.agent.stop(signal.SIGKILL)
    cluster.start_agent()
    wait_for(lambda: cluster.app("twice")["actual"] == "running", 20, "twice to run")
    names = sorted(c.name.rsplit(".", 1)[0] for c in cluster.containers("twice"))
    assert names == ["docklet.twice.1", "docklet.twice.2"]
