"""The seed walkthrough's steps 6-8 for real: CLI, CP and agent processes on the real engine."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import dockerlab
import pytest
from conftest import RUN_ID, Cluster, free_port, wait_for

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def web_image_v2(docker_client: Any) -> Iterator[str]:
    """A second, different build of the web image: what `docklet update --image` moves to."""
    tag = f"docklet-test/web:v2-{RUN_ID}"
    dockerlab.build_web_image(docker_client, tag, {"docklet.test-run": RUN_ID})
    yield tag
    dockerlab.remove_image(docker_client, tag)


class Poller:
    """Hits the app's published port all along, counting the requests that fail."""

    def __init__(self, url: str) -> None:
        self.url, self.ok, self.failed = url, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                urllib.request.urlopen(self.url, timeout=2).read()
                self.ok += 1
            except OSError:
                self.failed += 1

    def __enter__(self) -> Poller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def ps_row(cluster: Cluster) -> list[str]:
    result = cluster.docklet("ps")
    header, row = result.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "REVISION", "DESIRED", "ACTUAL", "NODE", "STATUS"]
    return row.split()


def test_seed_steps_6_to_8_update_canary_and_automatic_rollback(
    cluster: Cluster, web_image: str, web_image_v2: str, registry: str
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    run = cluster.docklet("run", web_image, "--name", "web", "-p", f"127.0.0.1:{port}:80")
    assert run.returncode == 0, run.stderr
    wait_for(lambda: cluster.app("web")["status"] == "stable", 20, "v1 to be stable")

    # 6. The update: a canary, verified, then stable. ps shows v2 rolling while it rolls.
    seen: list[list[str]] = []
    watching = threading.Event()

    def watch() -> None:
        while not watching.wait(0.1):
            seen.append(ps_row(cluster))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with Poller(url) as good:
        update = cluster.docklet("update", "web", "--image", web_image_v2, timeout=120)
    watching.set()
    watcher.join()
    assert update.returncode == 0, update.stdout + update.stderr
    assert update.stdout.startswith("🔥 Triggering rollout...\n")
    assert "✔ web v2 is stable (1/1)" in update.stdout
    assert ["web", "v2", "running", "running", "node-1", "rolling_update"] in seen
    # 7. Success path.
    assert ps_row(cluster) == ["web", "v2", "running", "running", "node-1", "stable"]
    assert web_image_v2 in urllib.request.urlopen(url, timeout=5).read().decode()
    (container,) = [c for c in cluster.containers("web") if c.status == "running"]
    assert container.labels["docklet.revision"] == "2"

    # 8. An image that does not exist: the canary fails, v2 is restored, nothing broke.
    missing = f"{registry}/docklet-test/nginx:does-not-exist-{RUN_ID}"
    with Poller(url) as bad:
        failed = cluster.docklet("update", "web", "--image", missing, timeout=120)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    out = failed.stdout + failed.stderr
    assert "🔥 Triggering rollout..." in out
    assert "✖ Canary failed" in out and "↩ Rolling back to previous revision" in out
    assert "✖ web v3 rolled back:" in out
    assert bad.failed == 0 and bad.ok > 0  # the old revision was never interrupted
    wait_for(lambda: ps_row(cluster)[5] == "stable", 20, "the app to be stable again")
    assert ps_row(cluster) == ["web", "v2", "running", "running", "node-1", "stable"]
    assert "web: desired v3 failed, running v2" in cluster.docklet("ps").stdout
    # A good update with a published host port is stop-first: a gap of a moment, the way
    # Swarm's default update is; benchmarks/rollout.py measures it.
    assert good.ok > 0

    history = cluster.docklet("history", "web").stdout
    assert "v3" in history and "failed" in history and "stable" in history
    assert cluster.client.get("/api/health") == {"status": "ok"}
