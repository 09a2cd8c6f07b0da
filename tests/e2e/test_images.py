"""The seed's install path: the CP and the agent as containers, built offline here."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from conftest import BIN, RUN_ID, free_port, wait_for

from docklet.cli import credentials
from docklet.wire.client import Client

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
BASE = "docklet/debian-python:bookworm"


@pytest.fixture(scope="module")
def images(docker_client: Any) -> Iterator[str]:
    tag = f"test-{RUN_ID}"
    base_existed = _exists(docker_client, BASE)
    subprocess.run(
        [str(ROOT / "contrib" / "build-images.sh"), "--offline-base", "--tag", tag],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=900,
    )
    yield tag
    for name in ("control-plane", "agent"):
        docker_client.images.remove(f"docklet/{name}:{tag}", force=True)
    if not base_existed:
        docker_client.images.remove(BASE, force=True)


def _exists(client: Any, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def test_control_plane_and_agent_run_as_containers(
    docker_client: Any, images: str, web_image: str, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    volume = f"docklet-test-data-{RUN_ID}"
    created: list[Any] = []
    cluster_id = ""
    try:
        created.append(
            docker_client.containers.run(
                f"docklet/control-plane:{images}",
                name=f"docklet-cp-{RUN_ID}",
                detach=True,
                ports={"8080/tcp": ("127.0.0.1", port)},
                volumes={volume: {"bind": "/data"}},
            )
        )
        client = Client(url)
        wait_for(lambda: _answers(client), 30, "the CP container to answer")
        cluster_id = client.get("/api/version")["cluster_id"]
        agent = docker_client.containers.run(
            f"docklet/agent:{images}",
            name=f"docklet-agent-{RUN_ID}",
            detach=True,
            network_mode="host",
            environment={"DOCKLET_CP": url},
            volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock"}},
        )
        created.append(agent)
        # No name given: the node is named after the Docker host, as a user would see.
        (node,) = wait_for(lambda: client.get("/api/state/nodes"), 30, "the agent to register")
        assert node["node_id"] == docker_client.info()["Name"]
        wait_for(lambda: client.get("/api/state/nodes")[0]["status"] == "online", 30, "online")

        run = subprocess.run(
            [str(BIN / "docklet"), "--cp", url, "run", web_image, "--name", "web"],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert run.returncode == 0, run.stderr
        # A fresh cluster: the CLI's first command claimed the admin token and kept it.
        assert "First use of this cluster: logged in" in run.stderr
        client.token = credentials.load(url)
        assert client.token and client.token not in run.stdout + run.stderr
        # Git over HTTP from the CP container, with the API token as password.
        host = url.removeprefix("http://")
        clone = subprocess.run(
            [
                "git",
                "clone",
                "-q",
                f"http://x:{client.token}@{host}/git/apps.git",
                str(tmp_path / "c"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert clone.returncode == 0, clone.stderr
        assert (tmp_path / "c" / "apps" / "web.yaml").exists()
        agent.restart()  # keeps its node token in the container: rejoins without a join token
        nodes = wait_for(lambda: client.get("/api/state/nodes"), 30, "nodes")
        assert [n["node_id"] for n in nodes] == [node["node_id"]]  # the same node again
        wait_for(lambda: client.get("/api/apps/web")["actual"] == "running", 30, "web running")
        assert (
            len(
                docker_client.containers.list(
                    ignore_removed=True, filters={"label": f"docklet.cluster={cluster_id}"}
                )
            )
            == 1
        )
    finally:
        for c in created:
            c.remove(force=True)
        if cluster_id:
            for c in docker_client.containers.list(
                ignore_removed=True, all=True, filters={"label": f"docklet.cluster={cluster_id}"}
            ):
                c.remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.volumes.get(volume).remove(force=True)


def _answers(client: Client) -> bool:
    try:
        return client.get("/api/health") == {"status": "ok"}
    except Exception:  # not up yet
        return False
