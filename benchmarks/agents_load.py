"""Load of many polling agents on one control plane (no Docker needed).

Starts a real `docklet-cp` on loopback, registers N simulated agents, and has
each send heartbeats (with C containers each) and hold a task long-poll, as a
real agent does, for D seconds. Meanwhile it times the calls a user makes
(`GET /api/state/apps`, creating an app) and reads the CP's CPU time.

Usage: python benchmarks/agents_load.py [--agents 30] [--containers 10]
       [--interval 1.0] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from controlplane import admin, control_plane

from docklet.client import Client
from docklet.errors import DockletError


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agent(
    url: str, n: int, containers: int, interval: float, stop: threading.Event, beats: list[float]
) -> None:
    joining = Client(url)
    joining.headers["X-Docklet-Join-Token"] = os.environ["DOCKLET_JOIN_TOKEN"]
    reg = joining.post(
        "/api/agents/register", {"engine_id": f"bench-engine-{n}", "name": f"bench-{n}"}
    )
    me = Client(url, token=reg["token"])
    node = reg["node_id"]
    snapshot = [
        {
            "id": f"{n:04d}{i:060d}",
            "name": f"docklet.other{n}.{i}",
            "image": "x",
            "state": "running",
            "labels": {"docklet.app": f"other{n}", "docklet.slot": str(i), "docklet.revision": "1"},
        }
        for i in range(containers)
    ]
    poller = threading.Thread(target=poll, args=(me, node, stop), daemon=True)
    poller.start()
    while not stop.is_set():
        start = time.perf_counter()
        me.post(f"/api/agents/{node}/heartbeat", {"containers": snapshot, "report_seq": 0})
        beats.append((time.perf_counter() - start) * 1000)
        stop.wait(interval)


def poll(me: Client, node: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            me.get(f"/api/agents/{node}/tasks?wait=5", timeout=20)
        except DockletError:
            return  # the CP is shutting down at the end of the run


def pct(values: list[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * p))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=30)
    parser.add_argument("--containers", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    flags = ("--heartbeat-interval", str(args.interval), "--log-level", "WARNING")
    with tempfile.TemporaryDirectory() as tmp, control_plane(tmp, *flags) as (url, pid):
        client = admin(url)
        stop = threading.Event()
        beats: list[float] = []
        threads = [
            threading.Thread(
                target=agent,
                daemon=True,
                args=(url, n, args.containers, args.interval, stop, beats),
            )
            for n in range(args.agents)
        ]
        for t in threads:
            t.start()
        time.sleep(2)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        reads, writes = [], []
        n = 0
        while time.monotonic() - t0 < args.seconds:
            start = time.perf_counter()
            client.get("/api/state/apps")
            reads.append((time.perf_counter() - start) * 1000)
            if n % 10 == 0:
                start = time.perf_counter()
                client.post("/api/apps", {"name": f"load-{n}", "image": "nginx", "replicas": 2})
                writes.append((time.perf_counter() - start) * 1000)
            n += 1
            time.sleep(0.05)
        busy = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        stop.set()
    print(
        f"{args.agents} agents × {args.containers} containers, heartbeat every "
        f"{args.interval:g}s, long-polling, {args.seconds:g}s"
    )
    for name, values in (
        ("heartbeat", beats),
        ("GET /api/state/apps", reads),
        ("POST /api/apps (commit)", writes),
    ):
        print(
            f"{name:<26} p50 {statistics.median(values):6.1f} ms  p99 {pct(values, 0.99):6.1f} ms"
            f"  (n={len(values)})"
        )
    print(f"control plane CPU: {busy * 100:.0f}% of one core")


if __name__ == "__main__":
    main()
