"""Slow clients against one control plane: do heartbeats and /api/health still answer?

Starts a fresh `docklet-cp` on loopback and `--agents` simulated agents on
127.0.0.1, each registering and then sending its heartbeat over real HTTP
every `--interval` seconds (a new connection each, as docklet's agent does),
while a prober asks GET /api/health every 0.2 s. The run has two phases of
`--seconds` each, back to back: first quiet, then with `--slow` connections
from 127.0.0.2, each sending its request a header line every `--every`
seconds and never finishing it, and coming back `--every` seconds after the
CP answers or closes it (tests/hostile.py's SlowClients). It prints the
heartbeat and health latencies (p50, p99, max) of both phases side by side,
every error, the slow connections open (sampled every 0.5 s) and what they
were answered, the CP's CPU, and every node status the CP showed (sampled
every 0.5 s): any other than online means it judged live nodes by what it
could not hear.

Bounded in time, stops by itself; the CP, its data directory and every
socket are gone at the end.

Usage: python benchmarks/slow_clients.py [--agents 50] [--slow 1000] [--seconds 20]
       [--interval 1] [--every 3] [--cp-args "--threads 64"]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from controlplane import control_plane  # noqa: E402
from hostile import Repeat, SlowClients, call  # noqa: E402

HEALTH_EVERY = 0.2


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def register(url: str, n: int) -> tuple[str, str]:
    """A node for simulated agent `n`, joined with the benchmark's join token."""
    join = {"X-Docklet-Join-Token": os.environ["DOCKLET_JOIN_TOKEN"]}
    body = {"engine_id": f"slow-bench-{n}", "name": f"bench-{n}"}
    status, answer, _ = call(url, "POST", "/api/agents/register", body, join, timeout=30)
    if status != 200:
        raise SystemExit(f"agent {n} could not register: {status} {answer}")
    return answer["node_id"], answer["token"]


def heartbeats(url: str, agents: list[tuple[str, str]], every: float) -> list[Repeat]:
    beats = [
        Repeat(
            every,
            url,
            "POST",
            f"/api/agents/{node}/heartbeat",
            {"containers": [], "report_seq": 0},
            {"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        for node, token in agents
    ]
    for beat in beats:
        beat.start()
        time.sleep(every / len(beats))  # spread over the interval, as real agents are
    return beats


class Statuses(threading.Thread):
    """Every node status GET /api/state/nodes shows, every 0.5 s, by phase."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.phase = url, "quiet"
        self.seen: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            status, nodes, _ = call(self.url, "GET", "/api/state/nodes", timeout=10)
            if status == 200:
                self.seen[self.phase].update(n["status"] for n in nodes)
            else:
                self.seen[self.phase][f"no answer ({status})"] += 1


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return sorted(values)[min(len(values) - 1, int(len(values) * p))] * 1000


def answers_between(repeats: list[Repeat], start: float, end: float) -> list[Any]:
    return [a for r in repeats for a in r.answers if start <= a[0] < end]


def summary(answers: list[Any]) -> dict[str, Any]:
    ok = [took for _, status, took in answers if status == 200]
    errors = collections.Counter(str(s) for _, s, _ in answers if s != 200)
    return {
        "n": len(answers),
        "p50": pct(ok, 0.50),
        "p99": pct(ok, 0.99),
        "max": pct(ok, 1.0),
        "errors": dict(errors),
    }


def phase(url: str, args: argparse.Namespace, pid: int, slow: bool) -> dict[str, Any]:
    """One phase of `args.seconds`; the slow clients' counts if `slow`."""
    clients = SlowClients(url, args.slow, source="127.0.0.2", every=args.every)
    if slow:
        clients.start()
        deadline = time.monotonic() + 30
        while clients.opened < args.slow and time.monotonic() < deadline:
            time.sleep(0.1)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    open_now = []
    while time.monotonic() - t0 < args.seconds:
        open_now.append(clients.open_now)
        time.sleep(0.5)
    t1 = time.monotonic()
    cpu = (cpu_seconds(pid) - cpu0) / (t1 - t0)
    if slow:
        clients.stop()
    return {
        "window": (t0, t1),
        "cpu": cpu,
        "slow": {
            "opened": clients.opened,
            "open (min/median)": f"{min(open_now)}/{sorted(open_now)[len(open_now) // 2]}",
            "answers": dict(clients.answers),
        }
        if slow
        else {},
    }


def report(args: argparse.Namespace, results: dict[str, Any], beats: list[Repeat],
           health: Repeat, statuses: Statuses, metrics: dict[str, Any]) -> None:  # fmt: skip
    print(f"\n{args.agents} agents heartbeating every {args.interval:g}s from 127.0.0.1;"
          f" {args.seconds:g}s per phase; slow: {args.slow} connections from 127.0.0.2,"
          f" a header line every {args.every:g}s\n")  # fmt: skip
    print(f"{'':28}{'quiet':>26}{'with slow clients':>34}")
    rows = {name: {} for name in ("heartbeat", "health")}
    for name, result in results.items():
        start, end = result["window"]
        rows["heartbeat"][name] = summary(answers_between(beats, start, end))
        rows["health"][name] = summary(answers_between([health], start, end))
    for call_name, by_phase in rows.items():
        for key in ("n", "p50", "p99", "max"):
            unit = "" if key == "n" else " ms"
            cells = [f"{by_phase[p][key]:.1f}{unit}" if key != "n" else str(by_phase[p][key])
                     for p in ("quiet", "slow")]  # fmt: skip
            print(f"{call_name + ' ' + key:28}{cells[0]:>26}{cells[1]:>34}")
        errors = [str(by_phase[p]["errors"] or "none") for p in ("quiet", "slow")]
        print(f"{call_name + ' errors':28}{errors[0]:>26}{errors[1]:>34}")
    cpu = [f"{results[p]['cpu'] * 100:.0f}%" for p in ("quiet", "slow")]
    print(f"{'CP CPU':28}{cpu[0]:>26}{cpu[1]:>34}")
    seen = [str(dict(statuses.seen[p])) for p in ("quiet", "slow")]
    print(f"{'node statuses seen':28}{seen[0]:>26}{seen[1]:>34}")
    print(f"\nslow clients: {results['slow']['slow']}")
    print(f"CP metrics after: {metrics}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--slow", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--interval", type=float, default=1.0, help="heartbeat interval")
    parser.add_argument("--every", type=float, default=3.0, help="a slow client's line")
    parser.add_argument("--cp-args", default="", help="more docklet-cp flags")
    parser.add_argument("--cp-log", default="", help="append the CP's log to this file")
    args = parser.parse_args()
    flags = ("--heartbeat-interval", str(args.interval), *args.cp_args.split())
    log = open(args.cp_log or os.devnull, "ab")  # noqa: SIM115 (closed below)
    with (
        tempfile.TemporaryDirectory() as tmp,
        control_plane(tmp + "/cp", *flags, log=log) as (url, pid),
    ):
        agents = [register(url, n) for n in range(args.agents)]
        beats = heartbeats(url, agents, args.interval)
        health = Repeat(HEALTH_EVERY, url, "GET", "/api/health", timeout=10)
        statuses = Statuses(url)
        health.start()
        statuses.start()
        try:
            time.sleep(2 * args.interval)  # every agent has beaten once
            results = {"quiet": phase(url, args, pid, slow=False)}
            statuses.phase = "slow"
            results["slow"] = phase(url, args, pid, slow=True)
            _, version, _ = call(url, "GET", "/api/version", timeout=30)
        finally:
            statuses.stopping.set()
            for repeat in [*beats, health]:
                repeat.stop(wait=False)
            for repeat in [*beats, health]:
                repeat.join(timeout=30)
            statuses.join(timeout=15)
        metrics = version.get("metrics", {}) if isinstance(version, dict) else {}
        metrics = {k: metrics.get(k) for k in ("overloaded", "long_polls", "longest_write_ms")}
        report(args, results, beats, health, statuses, metrics)
    log.close()


if __name__ == "__main__":
    main()
