"""How long a line takes from a container to a `docklet logs -f` terminal.

A fresh `docklet-cp` (default 5 s heartbeat) and a real `docklet-agent` on the
real Docker engine; an app whose container writes a line every 50 ms holding
the moment it was written (the kernel's boot-time clock, /proc/uptime, which
the container shares with this host: 10 ms resolution); `docklet logs -f`, the
real CLI, reads them through the relay (channel → agent follower → batch up the channel
→ the CP's stream → the CLI). Each line's latency is when the CLI printed it
minus when the container wrote it. Prints p50/p95/p99 over --lines lines, and
how long the first line took after the command started.

Usage: python benchmarks/log_latency.py [--lines 300] [--interval 5]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout this script is in, not an installed docklet
sys.path.insert(0, str(ROOT / "tests"))
import dockerlab  # noqa: E402
from controlplane import BIN, admin, control_plane, start_agent  # noqa: E402

from docklet.wire.client import Client  # noqa: E402

# `read` is a shell builtin: no fork a line, so lines leave at a steady 20 a second.
WRITER = 'while true; do read up idle < /proc/uptime; echo "t $up"; usleep 50000; done'
STAMP = re.compile(r"\bt (\d+\.\d+)\b")


def boot_time() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def pct(values: list[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * p))]


def wait_running(client: Client, app: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        apps = {a["name"]: a for a in client.get("/api/state/apps?brief=true")}
        if apps.get(app, {}).get("running") == 1:
            return
        time.sleep(0.5)
    raise SystemExit(f"{app} did not run within {timeout:g}s")


def follow(url: str, app: str, count: int) -> tuple[list[float], float]:
    """Run `docklet logs -f`; the latency of each of `count` lines (ms), and of the first."""
    started = time.monotonic()
    cli = subprocess.Popen(
        [str(BIN / "docklet"), "--cp", url, "logs", "-f", "--tail", "0", app],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    timer = threading.Timer(count / 10 + 60, cli.kill)  # a stuck stream ends the run
    timer.start()
    latencies: list[float] = []
    first = float("nan")
    try:
        assert cli.stdout is not None
        for line in cli.stdout:
            now = boot_time()
            stamp = STAMP.search(line)
            if not stamp:
                continue
            if not latencies:
                first = time.monotonic() - started
            latencies.append((now - float(stamp[1])) * 1000)
            if len(latencies) >= count:
                break
    finally:
        timer.cancel()
        cli.terminate()
        _, err = cli.communicate(timeout=10)
    if len(latencies) < count:
        raise SystemExit(f"docklet logs -f gave {len(latencies)} lines of {count}: {err[-2000:]}")
    return latencies, first


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=300)
    parser.add_argument("--interval", type=float, default=5.0, help="the CP's heartbeat interval")
    args = parser.parse_args()
    docker = dockerlab.docker_client()
    run = uuid.uuid4().hex[:8]
    tag = f"docklet-bench/logs:{run}"
    dockerlab.build_web_image(docker, tag, {"docklet.test-run": run})
    flags = ("--heartbeat-interval", str(args.interval), "--log-level", "WARNING")
    cluster_id = ""
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            open(os.path.join(tmp, "cp.log"), "wb") as log,
            control_plane(tmp + "/cp", *flags, log=log) as (url, _pid),
        ):
            client = admin(url)
            cluster_id = client.get("/api/version")["cluster_id"]
            agent = start_agent(url, log, DOCKLET_STATE_DIR=tmp + "/agent")
            try:
                body = {"name": "latency", "image": tag, "command": ["sh", "-c", WRITER]}
                client.post("/api/apps", body)
                wait_running(client, "latency")
                latencies, first = follow(url, "latency", args.lines)
            finally:
                agent.terminate()
                agent.wait()
    finally:
        ours = {"label": f"docklet.cluster={cluster_id}"}
        for c in docker.containers.list(all=True, filters=ours) if cluster_id else []:
            c.remove(force=True)
        dockerlab.remove_image(docker, tag)
    print(
        f"log latency, container write → `docklet logs -f` line, {len(latencies)} lines"
        f" (one every 50 ms), heartbeat {args.interval:g}s, /proc/uptime's 10 ms resolution:"
    )
    print(
        f"p50 {pct(latencies, 0.5):.0f} ms | p95 {pct(latencies, 0.95):.0f} ms"
        f" | p99 {pct(latencies, 0.99):.0f} ms | max {max(latencies):.0f} ms"
        f" | first line {first * 1000:.0f} ms after the command started"
    )


if __name__ == "__main__":
    main()
