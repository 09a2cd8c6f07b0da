"""Load of many agents on one control plane (no Docker needed).

For each size, starts a fresh `docklet-cp` on loopback and N simulated
agents in several processes (threads inside each), which behave as
`docklet-agent` does: a fresh connection per call, a heartbeat every
`--interval` seconds with C containers, a task long-poll (a pause after an
early empty answer, at once when a heartbeat says tasks wait), jittered
backoff on 503s and timeouts, registering again on 401. Agents start spread
over `--ramp` seconds, as real ones do. After the warm-up, for D seconds,
it times the calls a user makes (`GET /api/state/apps`, creating an app),
and reads the CP's CPU time, RSS and longest SQLite write transaction.

Usage: python benchmarks/agents_load.py [--agents 30,100,300,1000]
       [--containers 10] [--interval 5] [--seconds 30] [--processes 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from controlplane import admin, control_plane

from docklet.client import Client
from docklet.errors import APIError, CPUnreachable, DockletError

POLL_WAIT = 20.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def jittered(seconds: float) -> float:
    return random.uniform(seconds / 2, seconds)


class SimAgent:
    """One simulated docklet-agent: register, heartbeat, long-poll; never gives up."""

    def __init__(self, url: str, n: int, containers: int, interval: float, stats: Stats) -> None:
        self.url, self.n, self.interval, self.stats = url, n, interval, stats
        self.node, self.me = "", Client(url)
        self.generation = 0
        self.lock = threading.Lock()
        self.tasks_waiting = threading.Event()
        self.snapshot = [
            {
                "id": f"{n:04d}{i:060d}",
                "name": f"docklet.other{n}.{i}",
                "image": "x",
                "state": "running",
                "labels": {
                    "docklet.app": f"other{n}",
                    "docklet.slot": str(i),
                    "docklet.revision": "1",
                },
            }
            for i in range(containers)
        ]

    def register(self, stop: threading.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            joining = Client(self.url, token=self.me.token)
            joining.headers["X-Docklet-Join-Token"] = os.environ["DOCKLET_JOIN_TOKEN"]
            try:
                reg = joining.post(
                    "/api/agents/register",
                    {"engine_id": f"bench-engine-{self.n}", "name": f"bench-{self.n}"},
                )
            except DockletError as exc:
                self.stats.error("register", exc)
                stop.wait(jittered(backoff))
                backoff = min(backoff * 2, 15)
                continue
            self.node, self.me = reg["node_id"], Client(self.url, token=reg["token"])
            self.generation += 1
            return

    def refused(self, exc: DockletError, generation: int, stop: threading.Event) -> None:
        """401: register again (once for both loops), after a jittered pause."""
        with self.lock:
            if generation == self.generation:
                stop.wait(jittered(1.0))
                self.register(stop)

    def heartbeat_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            generation, wait = self.generation, self.interval
            start = time.perf_counter()
            try:
                reply = self.me.post(
                    f"/api/agents/{self.node}/heartbeat",
                    {"containers": self.snapshot, "report_seq": 0},
                )
                self.stats.beat((time.perf_counter() - start) * 1000)
                if reply.get("tasks_waiting"):
                    self.tasks_waiting.set()
            except APIError as exc:
                self.stats.error("heartbeat", exc)
                if exc.status == 401:
                    self.refused(exc, generation, stop)
                wait = jittered(wait)
            except CPUnreachable as exc:
                self.stats.error("heartbeat", exc)
                wait = jittered(wait)
            stop.wait(wait)

    def poll_loop(self, stop: threading.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            generation = self.generation
            wait = 0.0 if self.tasks_waiting.is_set() else POLL_WAIT
            self.tasks_waiting.clear()
            start = time.monotonic()
            try:
                reply = self.me.get(
                    f"/api/agents/{self.node}/tasks?wait={wait:g}&max=32", timeout=wait + 10
                )
                backoff = 0.5
            except DockletError as exc:
                self.stats.error("poll", exc)
                if isinstance(exc, APIError) and exc.status == 401:
                    self.refused(exc, generation, stop)
                else:
                    stop.wait(jittered(backoff))
                    backoff = min(backoff * 2, 15)
                continue
            self.stats.polled(len(reply.get("tasks", [])))
            if not reply.get("tasks") and wait > 0 and time.monotonic() - start < wait / 2:
                self.tasks_waiting.wait(jittered(self.interval))  # no slot: pause, not spin

    def run(self, stop: threading.Event) -> None:
        self.register(stop)
        threading.Thread(target=self.poll_loop, args=(stop,), daemon=True).start()
        self.heartbeat_loop(stop)


class Stats:
    """What one process's agents saw, from `measuring` on (errors before it are the ramp's)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.measuring = False
        self.beats: list[float] = []
        self.errors: dict[str, int] = {}
        self.ramp_errors: dict[str, int] = {}
        self.leased = 0
        self.polls = 0

    def beat(self, ms: float) -> None:
        if self.measuring:
            with self.lock:
                self.beats.append(ms)

    def polled(self, leased: int) -> None:
        with self.lock:
            self.polls += 1
            self.leased += leased

    def error(self, call: str, exc: DockletError) -> None:
        kind = f"{call} {exc.status}" if isinstance(exc, APIError) else f"{call} timeout/refused"
        with self.lock:
            into = self.errors if self.measuring else self.ramp_errors
            into[kind] = into.get(kind, 0) + 1


def agent_process(
    url: str,
    join_token: str,
    numbers: list[int],
    args: argparse.Namespace,
    go: Any,
    done: Any,
    results: Any,
) -> None:
    """Many agents in this process, one thread pair each."""
    os.environ["DOCKLET_JOIN_TOKEN"] = join_token
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stats, stop = Stats(), threading.Event()
    for n in numbers:
        agent = SimAgent(url, n, args.containers, args.interval, stats)
        threading.Thread(target=agent.run, args=(stop,), daemon=True).start()
        time.sleep(args.ramp / max(1, len(numbers)))
    go.wait()
    stats.measuring = True
    done.wait()
    stats.measuring = False
    with stats.lock:
        results.put((stats.beats, stats.errors, stats.ramp_errors, stats.polls, stats.leased))
    stop.set()


def patiently(call: Any) -> Any:
    """`call()`, retried through 503s and timeouts for up to a minute."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return call()
        except DockletError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def pct(values: list[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def merge(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def run_size(size: int, args: argparse.Namespace) -> dict[str, Any]:
    flags = ("--heartbeat-interval", str(args.interval), "--log-level", "WARNING")
    flags += ("--threads", str(args.cp_threads)) if args.cp_threads else ()
    with tempfile.TemporaryDirectory() as tmp, control_plane(tmp, *flags) as (url, pid):
        client = admin(url)
        mp = multiprocessing.get_context("fork")
        go, done, results = mp.Event(), mp.Event(), mp.Queue()
        processes = max(1, min(args.processes, size))
        groups = [list(range(size))[i::processes] for i in range(processes)]
        workers = [
            mp.Process(
                target=agent_process,
                args=(url, os.environ["DOCKLET_JOIN_TOKEN"], g, args, go, done, results),
                daemon=True,
            )
            for g in groups
        ]
        for w in workers:
            w.start()
        time.sleep(args.ramp + args.warmup)
        go.set()
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        reads: list[float] = []
        writes: list[float] = []
        user_errors: dict[str, int] = {}
        n = 0
        while time.monotonic() - t0 < args.seconds:
            for call, timed in (("ps", reads), ("create", writes)):
                if call == "create" and n % 10:
                    continue
                start = time.perf_counter()
                try:
                    if call == "ps":
                        client.get("/api/state/apps")
                    else:
                        client.post(
                            "/api/apps", {"name": f"load-{n}", "image": "nginx", "replicas": 2}
                        )
                    timed.append((time.perf_counter() - start) * 1000)
                except DockletError as exc:
                    kind = f"user {call} {getattr(exc, 'status', 'timeout')}"
                    user_errors[kind] = user_errors.get(kind, 0) + 1
            n += 1
            time.sleep(0.1)
        busy = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        rss = rss_mb(pid)
        done.set()  # the agents stop: the CP answers what follows even if it was saturated
        metrics = patiently(lambda: client.get("/api/version")["metrics"])
        nodes = patiently(lambda: client.get("/api/state/nodes"))
        beats: list[float] = []
        errors: dict[str, int] = dict(user_errors)
        ramp: dict[str, int] = {}
        polls = leased = 0
        for _ in workers:
            b, e, r, p, le = results.get(timeout=60)
            beats += b
            merge(errors, e)
            merge(ramp, r)
            polls += p
            leased += le
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()
    return {
        "agents": size,
        "beats": beats,
        "reads": reads,
        "writes": writes,
        "cpu": busy * 100,
        "rss": rss,
        "longest_write": metrics["longest_write_ms"],
        "overloaded": metrics["overloaded"],
        "online": sum(1 for x in nodes if x["status"] == "online"),
        "errors": errors,
        "ramp_errors": ramp,
        "polls": polls,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", default="30,100,300,1000", help="sizes, comma-separated")
    parser.add_argument("--containers", type=int, default=10)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--ramp", type=float, default=10, help="seconds over which agents start")
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--cp-threads", type=int, default=0, help="the CP's --threads (default)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.agents.split(",")]
    print(
        f"agents × {args.containers} containers, heartbeat every {args.interval:g}s,"
        f" long-poll {POLL_WAIT:g}s, {args.processes} agent processes,"
        f" {args.seconds:g}s measured after {args.ramp:g}s ramp + {args.warmup:g}s warm-up,"
        f" CP threads {args.cp_threads or 'default'}"
    )
    header = (
        f"{'agents':>6} | {'heartbeat p50/p99 ms':>20} | {'user ps p50/p99 ms':>18} |"
        f" {'create p50/p99 ms':>18} | {'longest write ms':>16} | {'CP CPU %':>8} |"
        f" {'CP RSS MB':>9} | {'online':>6} | errors"
    )
    print(header)
    print("-" * len(header))
    for size in sizes:
        r = run_size(size, args)
        errors = sum(r["errors"].values())
        detail = f" {r['errors']}" if errors else ""
        ramp = f" (ramp: {r['ramp_errors']})" if r["ramp_errors"] else ""
        print(
            f"{size:>6} | {statistics.median(r['beats']):8.1f} / {pct(r['beats'], 0.99):8.1f} |"
            f" {statistics.median(r['reads']):7.1f} / {pct(r['reads'], 0.99):7.1f} |"
            f" {statistics.median(r['writes']):7.1f} / {pct(r['writes'], 0.99):7.1f} |"
            f" {r['longest_write']:16.1f} | {r['cpu']:8.0f} | {r['rss']:9.0f} |"
            f" {r['online']:>6} | {errors}{detail}{ramp}",
            flush=True,
        )


if __name__ == "__main__":
    main()
