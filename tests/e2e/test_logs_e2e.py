"""`docklet logs` end to end: the real CLI, CP and agents, on two real Docker engines.

The lines travel the whole relay: the CP rings the node on its channel, the
agent follows `docker logs` and posts batches, the CP streams them to the CLI.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dockerlab
import pytest
from conftest import BIN, RUN_ID, Cluster, Process, wait_for

from docklet.cp.settings import CPConfig
from docklet.wire.client import Client

pytestmark = pytest.mark.docker

PRINTER = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done"
LINE = re.compile(r"^(\S+@\S+)\s+\|\s+line (\d+)$")
# What a log line takes to reach the terminal here: generous, since CI machines are
# shared; the target (1 s p95) is measured by benchmarks/log_latency.py.
LATENCY_BOUND = 5.0


class LogsCommand:
    """`docklet logs ARGS` running, its output lines read as they come, with when."""

    def __init__(self, cluster: Cluster, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "docklet"), "--cp", cluster.url, "logs", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**os.environ, "DOCKLET_TOKEN": cluster.client.token or ""},
        )
        self.started = time.monotonic()
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def replicas(self, count: int, timeout: float) -> dict[str, list[int]]:
        """Read until `count` labels each had two lines: the line numbers by label."""
        seen: dict[str, list[int]] = {}
        deadline = time.monotonic() + timeout
        while sum(len(v) >= 2 for v in seen.values()) < count:
            _, line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            match = LINE.match(line)
            if match:
                seen.setdefault(match[1], []).append(int(match[2]))
        return seen

    def first_line(self, timeout: float) -> float:
        """Seconds from the command's start to its first log line."""
        while True:
            at, line = self.lines.get(timeout=timeout)
            if LINE.match(line):
                return at - self.started

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C: the caller leaves
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def second_engine(docker_client: Any) -> Iterator[dockerlab.ExtraEngine]:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("a second Docker engine needs root, unshare and ip")
    engine = dockerlab.ExtraEngine(Path(f"/tmp/dkl-{RUN_ID}-l"), f"dl{RUN_ID[:6]}", 200)
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()


def node_2_agent(cluster: Cluster, engine: dockerlab.ExtraEngine, tmp_path: Path) -> Process:
    return Process(
        [str(BIN / "docklet-agent")],
        tmp_path / "agent2.log",
        env={
            "DOCKLET_CP": cluster.url,
            "DOCKLET_NODE_NAME": "node-2",
            "DOCKER_HOST": engine.url,
            "DOCKLET_JOIN_TOKEN": cluster.join_token(),
            "DOCKLET_STATE_DIR": str(tmp_path / "agent2-state"),
        },
    )


def create(cluster: Cluster, name: str, image: str, replicas: int) -> None:
    body = {"name": name, "image": image, "replicas": replicas, "command": ["sh", "-c", PRINTER]}
    cluster.client.post("/api/apps", body)
    wait_for(
        lambda: (cluster.app(name) or {}).get("running") == replicas,
        90,
        f"{name} to run {replicas} replicas",
    )


def test_logs_follow_shows_every_replica_across_two_engines_at_once(
    cluster: Cluster,
    second_engine: dockerlab.ExtraEngine,
    registry: str,
    web_image: str,
    docker_client: Any,
    tmp_path: Path,
) -> None:
    ref = dockerlab.push_to_registry(docker_client, web_image, "docklet-test/logs", RUN_ID)
    agent2 = node_2_agent(cluster, second_engine, tmp_path)
    other = second_engine.client()
    logs: LogsCommand | None = None
    try:
        agent2.start()
        wait_for(lambda: cluster.node_online("node-2"), 20, "node-2 to come online")
        create(cluster, "relay3", ref, 3)
        assert set(cluster.app("relay3")["nodes"]) == {"node-1", "node-2"}

        logs = LogsCommand(cluster, "-f", "--tail", "2", "relay3")
        seen = logs.replicas(3, timeout=30)
        placed = {f"relay3.{c['slot']}@{c['node']}" for c in containers_of(cluster, "relay3")}
        assert set(seen) == placed and len(placed) == 3  # web.N@node, each replica's lines
        for numbers in seen.values():
            assert numbers == sorted(numbers)

        # A line the container writes now is on the terminal within the bound.
        logs.lines = queue.Queue()
        written = time.monotonic()
        later = logs.replicas(3, timeout=LATENCY_BOUND + 2)
        assert time.monotonic() - written < LATENCY_BOUND + 2
        assert set(later) == placed

        # The caller leaving stops both agents' followers within a few seconds.
        logs.stop()
        for log in (cluster.agent.log, tmp_path / "agent2.log"):
            wait_for(lambda log=log: "stopped (" in log.read_text(), 10, f"{log.name} to stop")
    finally:
        if logs is not None:
            logs.stop()
        agent2.stop()
        ours = {"label": f"docklet.cluster={cluster.cluster_id}"}
        for c in other.containers.list(ignore_removed=True, all=True, filters=ours):
            c.remove(force=True)
        dockerlab.remove_image(other, ref)
        dockerlab.remove_image(docker_client, ref)


def containers_of(cluster: Cluster, app: str) -> list[dict[str, Any]]:
    """The app's placed containers (slot, node) as the CP shows them."""
    view = cluster.client.get(f"/api/apps/{app}")
    return [
        {"slot": c["slot"], "node": c["node_id"]}
        for c in view["instances"]
        if c["state"] == "running"
    ]


@pytest.fixture
def crowded(tmp_path: Path, docker_client: Any, web_image: str) -> Iterator[Cluster]:
    """A cluster whose CP has two long-poll slots, both held by other nodes' polls, and the
    default 5 s heartbeat: its agent never holds a long-poll."""
    flags = ["--threads", "8", "--poll-reserve", "4", "--event-streams", "1"]
    assert CPConfig(threads=8, poll_reserve=4, event_streams=1).long_poll_slots == 2
    c = Cluster(tmp_path, docker_client)
    i = c.cp.args.index("--heartbeat-interval")
    c.cp.args[i + 1] = "5"
    c.cp.args += flags
    stop = threading.Event()
    try:
        c.start_cp()
        c.login()
        join = c.join_token()
        for n in range(2):
            hold_a_long_poll(c.url, f"poller-{n}", join, stop)
        assert c.agent.env is not None
        c.agent.env["DOCKLET_JOIN_TOKEN"] = join
        c.start_agent()
        yield c
    finally:
        stop.set()
        c.close()


def hold_a_long_poll(url: str, name: str, join: str, stop: threading.Event) -> None:
    """Register a node and keep one task long-poll of it waiting, again and again."""
    client = Client(url)
    client.headers["X-Docklet-Join-Token"] = join
    reply = client.post("/api/agents/register", {"engine_id": f"e-{name}", "name": name})
    node = Client(url, token=reply["token"])

    def poll() -> None:
        while not stop.is_set():
            try:
                node.get(f"/api/agents/{reply['node_id']}/tasks?wait=20&max=1", timeout=30)
            except Exception:  # the CP stopping
                time.sleep(0.2)

    threading.Thread(target=poll, daemon=True).start()


def long_polls_waiting(url: str, token: str) -> float:
    request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read().decode()
    match = re.search(r"^docklet_long_polls_waiting (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else -1.0


def test_an_agent_without_a_long_poll_slot_streams_at_once(
    crowded: Cluster, web_image: str
) -> None:
    create(crowded, "noslot", web_image, 1)
    for _ in range(3):
        wait_for(
            lambda: long_polls_waiting(crowded.url, crowded.client.token or "") == 2,
            30,
            "both long-poll slots to be held by the other nodes",
        )
        logs = LogsCommand(crowded, "-f", "--tail", "0", "noslot")
        try:
            # Not a heartbeat (5 s) nor a poll back-off away: the channel rings it now.
            assert logs.first_line(timeout=10) < 2.5
        finally:
            logs.stop()


def test_exit_codes_say_what_is_wrong(cluster: Cluster, web_image: str) -> None:
    create(cluster, "quiet", web_image, 0)
    empty = cluster.docklet("logs", "quiet")
    missing = cluster.docklet("logs", "no-such-app")

    create(cluster, "orphan", web_image, 1)
    cluster.agent.stop(signal.SIGKILL)
    wait_for(
        lambda: json.dumps(cluster.client.get("/api/state/nodes")).count('"offline"') == 1,
        30,
        "node-1 to be offline",
    )
    offline = cluster.docklet("logs", "orphan")

    codes = {r.returncode for r in (empty, missing, offline)}
    assert len(codes) == 3 and 0 not in codes  # distinct, and none a success
    for result, words in ((empty, "no containers"), (missing, "no-such-app"), (offline, "node-1")):
        assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr
