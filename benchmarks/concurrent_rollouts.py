"""Concurrent rollouts: do 50 apps updated at once finish within 1.5x one app's rollout?

Makes a 3-node cluster on this machine: its own control plane (temporary data
dir, loopback port) and three agents, one on the local Docker engine and one
on each of two extra engines (tests/dockerlab.py's ExtraEngine: own bridge,
data root and socket; needs root, `unshare` and `ip`). Two busybox web images,
A and B, are built offline and pushed to the local registry (127.0.0.1:5000);
both are pulled onto the extra engines before anything is timed, so no
measurement includes a registry pull.

Then it creates --apps apps plus --runs "solo" apps, all alike (image A,
--replicas replicas, no published port, `rollout.min_healthy_time` M), and
waits until every one runs and its first revision is stable. Timed, on that
same cluster:

- one app: a solo app updated from A to B (POST /api/apps/NAME/update), from
  just before the request until the CP's `finished_at` of its rollout, once
  per solo app (--runs), median;
- all at once: the --apps apps updated to B by --apps concurrent requests (a
  thread each), from just before the first request until the last rollout's
  `finished_at`. Every rollout must end `stable`.

Then, for comparison, Docker alone (no Docklet): containers of B created and
started at once on the three engines, AGENT_WORKERS threads per engine as an
agent has: one, --apps, and --apps x --replicas (every new container the
rollouts start), each removed afterwards.

Prints each run, then a table: one-app time, all-apps time, their ratio
against the 1.5x target, per-app rollout durations (created_at to
finished_at, p50/p99), the update requests' latency and the CP's longest
write transaction (GET /api/version); where the time went (phases from the
event log: the request, the canary's deploy task, the health gate, the next
slot's deploy, the gate again); Docker alone, and the floor it sets; each
node's longest silence between heartbeats and the statuses the CP gave it
meanwhile, and slots moved off nodes it thought offline; the CPU the machine
and each process used during each measurement. --logs DIR keeps the CP's and
agents' logs.

Removes everything it made: the apps and their containers, the agents, the
control plane, the extra engines (and their bridges and data), and the local
image tags it built or pushed (the registry keeps its two tags).

Usage: python benchmarks/concurrent_rollouts.py [--apps 50] [--replicas 2] [--runs 3]
           [--min-healthy 2] [--logs DIR]
Target: --apps apps updated at once stable within 1.5x one app's rollout.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
from controlplane import admin, control_plane, start_agent

ROOT = Path(__file__).resolve().parent.parent
TAG = uuid.uuid4().hex[:8]
REPO = "docklet-bench/concurrent"
MAIN_ENGINE = "unix:///var/run/docker.sock"
AGENT_WORKERS = 32  # the agent's default --concurrency
POLL = 0.5  # seconds between two looks at the apps while a measurement runs
TARGET = 1.5

sys.path.insert(0, str(ROOT))  # the checkout this script is in, not an installed docklet
sys.path.insert(0, str(ROOT / "tests"))
import dockerlab  # noqa: E402

from docklet.wire.client import Client  # noqa: E402


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with suppress(Exception):
            if value := predicate():
                return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


# -- the cluster -----------------------------------------------------------------


def free_octets(n: int) -> list[int]:
    """Third octets of 10.231.X.0/24 that no interface here uses (ExtraEngine's bridges)."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    start = int(TAG[:2], 16) % 200 + 20
    free = [o for o in range(start, 255) if f"10.231.{o}." not in used]
    return free[:n]


@contextmanager
def extra_engine(index: int, octet: int) -> Iterator[dockerlab.ExtraEngine]:
    # Short path: a unix socket path must stay under 108 bytes.
    engine = dockerlab.ExtraEngine(
        Path(f"/tmp/dkl-cr{TAG[:6]}-{index}"), f"cr{TAG[:6]}{index}", octet
    )
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()


@dataclass
class Node:
    name: str
    docker_url: str
    client: docker.DockerClient
    dockerd_pid: int | None
    agent_pid: int = 0


def engine_client(url: str) -> docker.DockerClient:
    """A client with a connection per thread, as an agent's (its workers + 4)."""
    return docker.DockerClient(
        base_url=url, version="auto", timeout=60, max_pool_size=AGENT_WORKERS + 4
    )


def main_dockerd_pid() -> int | None:
    with suppress(OSError, ValueError):
        return int(Path("/var/run/docker.pid").read_text().strip())
    return None


# -- CPU accounting --------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their reaped children (0 if gone)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / os.sysconf("SC_CLK_TCK")


def with_children(pid: int | None) -> list[int]:
    """The process and its live children (dockerd's containerd), as they are now."""
    if not pid:
        return []
    found = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def machine_busy() -> tuple[float, float, float]:
    """(busy, waiting for I/O, total) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle, iowait = values[3], values[4]
    return (sum(values) - idle - iowait) / ticks, iowait / ticks, sum(values) / ticks


@dataclass
class CPU:
    """CPU used during a measurement: the machine's, and each named process's."""

    pids: dict[str, list[int]]
    start: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)
    busy: float = 0.0  # machine: cores busy on average (2.0 = both cores, on 2 cores)
    iowait: float = 0.0  # cores idle while waiting for I/O, on average
    wall: float = 0.0
    _t0: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def __enter__(self) -> CPU:
        self.start = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self._t0 = (time.monotonic(), *machine_busy())
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = {k: cpu_seconds(p) - self.start[k] for k, p in self.pids.items()}
        busy, iowait, total = machine_busy()
        self.wall = time.monotonic() - self._t0[0]
        share = (os.cpu_count() or 1) / max(1e-9, total - self._t0[3])
        self.busy = (busy - self._t0[1]) * share
        self.iowait = (iowait - self._t0[2]) * share


# -- measuring ---------------------------------------------------------------------


@dataclass
class Rollout:
    app: str
    rollout_id: int
    requested: float  # wall clock, just before the request
    answered: float  # wall clock, the request's answer
    status: str = ""
    created_at: float = 0.0  # the CP's, as the rollout row says
    finished_at: float = 0.0
    seen: float = 0.0  # wall clock when this script saw it terminal
    deploys: int = 0  # deploy tasks it made
    moved: int = 0  # slots placed again on another node (theirs had gone offline)
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.finished_at - self.created_at


class Bench:
    def __init__(self, url: str, image_a: str, args: argparse.Namespace) -> None:
        self.cp: Client = admin(url)
        self.image_a = image_a
        self.args = args
        self.names: list[str] = []

    def apps(self) -> dict[str, dict[str, Any]]:
        return {a["name"]: a for a in self.cp.get("/api/state/apps", timeout=60)}

    def create(self, name: str) -> None:
        self.names.append(name)
        self.cp.post(
            "/api/apps",
            {
                "name": name,
                "image": self.image_a,
                "replicas": self.args.replicas,
                "rollout": {"min_healthy_time": f"{self.args.min_healthy:g}s"},
            },
            timeout=120,
        )

    def first_revisions_stable(self, names: list[str]) -> bool:
        """Every app runs in full, and its current revision is stable (so an update rolls out)."""
        apps = self.apps()
        for name in list(names):
            app = apps.get(name)
            if app is None or app["actual"] != "running" or app["status"] != "stable":
                return False
            revs = self.cp.get(f"/api/apps/{name}/revisions")
            current = next(r for r in revs if r["revision"] == app["running_revision"])
            if current["status"] != "stable":
                return False
            names.remove(name)  # settled for good: not asked again
        return True

    def settled(self) -> bool:
        """No app has work left: no live rollout, no open task, only its replicas' containers."""
        return all(
            a["status"] == "stable"
            and a["actual"] == "running"
            and not a["tasks"]
            and len(a["instances"]) == a["replicas"]
            for a in self.apps().values()
        )

    def update(self, name: str, image: str) -> Rollout:
        requested = time.time()
        answer = self.cp.post(f"/api/apps/{name}/update", {"image": image}, timeout=300)
        answered = time.time()
        if not answer.get("rollout") or answer["rollout"]["revision"] != answer["revision"]:
            raise SystemExit(f"update of {name} started no rollout: {answer}")
        return Rollout(name, answer["rollout"]["id"], requested, answered)

    def follow(self, rollouts: list[Rollout], timeout: float) -> dict[str, Liveness]:
        """Until every rollout is terminal: one look at all apps (and nodes) every POLL seconds.

        Returns what was seen of each node meanwhile: its longest silence
        (`last_seen_ago`) and the statuses it had.
        """
        left = {r.app: r for r in rollouts}
        nodes: dict[str, Liveness] = {}
        deadline = time.monotonic() + timeout
        while left:
            if time.monotonic() > deadline:
                raise SystemExit(f"rollouts not finished after {timeout:g}s: {sorted(left)}")
            time.sleep(POLL)
            try:
                apps = self.apps()
                for n in self.cp.get("/api/state/nodes", timeout=60):
                    seen = nodes.setdefault(n["node_id"], Liveness())
                    seen.longest_silence = max(seen.longest_silence, n["last_seen_ago"])
                    seen.statuses.add(n["status"])
            except Exception as exc:  # a busy CP: look again
                print(f"  (GET /api/state/... failed: {exc})", flush=True)
                continue
            now = time.time()
            for name, r in list(left.items()):
                seen = apps[name]["rollout"]
                if seen and seen["id"] == r.rollout_id and seen["terminal"]:
                    r.status, r.seen = seen["status"], now
                    r.created_at, r.finished_at = seen["created_at"], seen["finished_at"]
                    del left[name]
        bad = [f"{r.app}: {r.status}" for r in rollouts if r.status != "stable"]
        if bad:
            raise SystemExit(f"rollouts that did not end stable: {', '.join(bad)}")
        return nodes

    def phases(self, r: Rollout) -> None:
        """Where the rollout's time went, from the app's event log (see PHASES)."""
        evs = [
            e for e in self.cp.get(f"/api/events?app={r.app}&limit=1000") if e["at"] >= r.requested
        ]
        mine = f"rollout {r.rollout_id} "

        def at(kind: str, task: int | None = None, *texts: str) -> float | None:
            return next(
                (
                    e["at"]
                    for e in evs
                    if e["kind"] == kind
                    and (task is None or e["task_id"] == task)
                    and all(t in e["message"] for t in texts)
                ),
                None,
            )

        marks: dict[str, float | None] = {"request": r.requested, "stable": r.finished_at}
        marks["started"] = at("rollout", None, mine)
        marks["promoting"] = promoting = at("rollout", None, mine, "→ promoting")
        deploys = [
            (e["at"], e["task_id"])
            for e in evs
            if e["kind"] == "task_created" and ": deploy " in e["message"]
        ]
        r.deploys = len(deploys)
        r.moved = sum(e["kind"] == "slot_placed" and "moved from" in e["message"] for e in evs)
        if promoting is not None:
            # The canary's deploys (more than one when its slot was placed again), then
            # the next slots'; each step ends when the last of its deploys is done.
            for n, step in enumerate(
                (
                    [t for a, t in deploys if a < promoting],
                    [t for a, t in deploys if a >= promoting],
                ),
                1,
            ):
                if step:
                    marks[f"leased{n}"] = at("task_leased", step[0])
                    done = [at("task_done", t) for t in step]
                    marks[f"done{n}"] = None if None in done else max(d for d in done if d)
        for label, a, b in PHASES:
            if marks.get(a) is not None and marks.get(b) is not None:
                r.phases[label] = marks[b] - marks[a]  # type: ignore[operator]


@dataclass
class Liveness:
    longest_silence: float = 0.0  # seconds since a node's last heartbeat, the most seen
    statuses: set[str] = field(default_factory=set)


# (label, from mark, to mark): a rollout of a 2-replica app on 3 nodes deploys
# the canary on the spare node, verifies it, then moves slot 2 and verifies it.
PHASES = [
    ("request → rollout started", "request", "started"),
    ("started → canary task leased", "started", "leased1"),
    ("canary deploy (agent+Docker)", "leased1", "done1"),
    ("canary done → promoting (gate)", "done1", "promoting"),
    ("promoting → slot-2 task leased", "promoting", "leased2"),
    ("slot-2 deploy (agent+Docker)", "leased2", "done2"),
    ("slot-2 done → stable (gate)", "done2", "stable"),
]


def one_app(bench: Bench, name: str, image_b: str) -> tuple[Rollout, dict[str, Liveness]]:
    r = bench.update(name, image_b)
    return r, bench.follow([r], timeout=600)


def all_apps(
    bench: Bench, names: list[str], image_b: str
) -> tuple[float, list[Rollout], dict[str, Liveness]]:
    """Every app updated at once: (wall clock just before the first request, the rollouts,
    the nodes' liveness meanwhile)."""
    ready = threading.Barrier(len(names) + 1)

    def go(name: str) -> Rollout:
        ready.wait()
        return bench.update(name, image_b)

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures = [pool.submit(go, n) for n in names]
        time.sleep(0.2)  # every thread waits at the barrier
        start = time.time()
        ready.wait()
        rollouts = [f.result() for f in futures]
    return start, rollouts, bench.follow(rollouts, timeout=1200)


def docker_alone(nodes: list[Node], image: str, count: int) -> float:
    """Seconds the engines take to create and start `count` containers of `image` at once.

    Spread over the nodes as evenly as Docklet spreads replicas, AGENT_WORKERS
    threads per engine as an agent has; no Docklet involved. Removed afterwards.
    """
    share = [count // len(nodes) + (i < count % len(nodes)) for i in range(len(nodes))]
    labels = {"docklet.bench": TAG}
    made: list[tuple[Node, str]] = []
    lock = threading.Lock()

    def one(node: Node, n: int) -> None:
        api = node.client.api
        created = api.create_container(
            image,
            name=f"cr-alone-{TAG}-{node.name}-{n}",
            labels=labels,
            host_config=api.create_host_config(restart_policy={"Name": "unless-stopped"}),
        )
        with lock:
            made.append((node, created["Id"]))
        api.start(created["Id"])

    def on(node: Node, k: int) -> None:
        with ThreadPoolExecutor(max_workers=AGENT_WORKERS) as pool:
            for f in [pool.submit(one, node, n) for n in range(k)]:
                f.result()

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            for f in [pool.submit(on, node, k) for node, k in zip(nodes, share, strict=True)]:
                f.result()
        return time.perf_counter() - started
    finally:
        for node, container_id in made:
            with suppress(docker.errors.APIError):
                node.client.api.remove_container(container_id, force=True)


# -- the report ------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of fewer than 100 values is the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def cpu_lines(label: str, cpu: CPU) -> list[str]:
    cores = os.cpu_count() or 1
    procs = ", ".join(f"{k} {v:.1f}" for k, v in cpu.used.items())
    return [
        f"  {label}: {cpu.wall:.1f} s wall, machine busy {cpu.busy:.2f} of {cores} cores"
        f" (+{cpu.iowait:.2f} waiting for I/O); CPU seconds: {procs}"
    ]


def report(
    args: argparse.Namespace,
    solos: list[Rollout],
    batch_start: float,
    batch: list[Rollout],
    cpus: dict[str, CPU],
    metrics: dict[str, Any],
    load: tuple[tuple[float, ...], tuple[float, ...]],
    alone: dict[str, float],
    watched: dict[str, dict[str, Liveness]],
) -> None:
    one = [r.finished_at - r.requested for r in solos]
    one_med = statistics.median(one)
    everything = max(r.finished_at for r in batch) - batch_start
    ratio = everything / one_med
    durations = [r.duration for r in batch]
    since_start = [r.finished_at - batch_start for r in batch]
    requests = [r.answered - r.requested for r in batch]
    seen = max(r.seen for r in batch) - batch_start
    n = len(batch)
    verdict = "met" if ratio <= TARGET else "MISSED"

    print()
    print(
        f"{n} apps + {len(solos)} solo apps, {args.replicas} replicas each, 3 nodes,"
        f" min_healthy_time {args.min_healthy:g}s; load average before {load[0][0]:.2f},"
        f" after {load[1][0]:.2f} ({os.cpu_count()} cores)"
    )
    rows = [
        ("one app: request → stable, median (s)", f"{one_med:.2f}", each(one)),
        (f"{n} apps at once: first request → last stable (s)", f"{everything:.2f}",
         f"seen by polling at {seen:.2f}"),
        ("ratio (target ≤ 1.5x)", f"{ratio:.2f}x", verdict),
        (f"{n} apps: rollout created → finished, p50 / p99 (s)",
         f"{pct(durations, 50):.2f} / {pct(durations, 99):.2f}",
         f"min {min(durations):.2f}"),
        (f"{n} apps: first request → each stable, p50 / p99 (s)",
         f"{pct(since_start, 50):.2f} / {pct(since_start, 99):.2f}",
         f"min {min(since_start):.2f}"),
        (f"{n} apps: update request latency, p50 / p99 (s)",
         f"{pct(requests, 50):.2f} / {pct(requests, 99):.2f}",
         f"one app: {each([r.answered - r.requested for r in solos])}"),
        ("CP longest write transaction (ms)", f"{metrics.get('longest_write_ms', 0):.1f}",
         f"503s so far: {metrics.get('overloaded', 0)}"),
    ]  # fmt: skip
    print(f"| {'measure':<52} | {'value':>13} | notes")
    print(f"|{'-' * 54}|{'-' * 15}|{'-' * 30}")
    for label, value, note in rows:
        print(f"| {label:<52} | {value:>13} | {note}")

    slow: dict[str, list[float]] = {}
    for w in metrics.get("slow_writes", []):
        if w["at"] >= batch_start:
            slow.setdefault(w["in"] or "?", []).append(w["ms"])
    if slow:
        print(
            "  CP write transactions over 20 ms in the batch (the newest 50 kept), by site: "
            + "; ".join(
                f"{site} {len(ms)}x, max {max(ms):.0f} ms"
                for site, ms in sorted(slow.items(), key=lambda kv: -sum(kv[1]))
            )
        )
    print()
    print("Where the time went (seconds; from the CP's event log)")
    print(
        f"| {'phase':<32} | {'one app, median':>15} | {f'{n} apps p50':>12} | {f'{n} apps p99':>12}"
    )
    print(f"|{'-' * 34}|{'-' * 17}|{'-' * 14}|{'-' * 14}")
    for label, _a, _b in PHASES:
        ones = [r.phases[label] for r in solos if label in r.phases]
        many = [r.phases[label] for r in batch if label in r.phases]
        if not ones or not many:
            continue
        print(
            f"| {label:<32} | {statistics.median(ones):15.2f} | {pct(many, 50):12.2f}"
            f" | {pct(many, 99):12.2f}"
        )
    print()
    print(
        f"Docker alone (no Docklet): containers of B created and started at once, spread"
        f" over the 3 engines, {AGENT_WORKERS} threads per engine"
    )
    for label, seconds in alone.items():
        print(f"  {label:<16} {seconds:6.2f} s")
    # The rollouts start every app's new containers (replicas per app) and wait out
    # one min_healthy_time after the last of an app's containers at least.
    floor = alone[f"{args.apps * args.replicas} at once"] + args.min_healthy
    print(
        f"  a floor for the {n} apps: all {args.apps * args.replicas} new containers"
        f" + one min_healthy_time = {floor:.2f} s = {floor / one_med:.2f}x the one-app time"
        " (stops and removals of the old containers not counted)"
    )
    print()
    print("Nodes while the rollouts ran: longest time since a heartbeat, statuses seen")
    for label, nodes in watched.items():
        print(
            f"  {label:<8} "
            + "; ".join(
                f"{node} {w.longest_silence:.1f} s ({', '.join(sorted(w.statuses))})"
                for node, w in sorted(nodes.items())
            )
        )
    moved = sum(r.moved for r in batch)
    extra = [r for r in batch if r.deploys > args.replicas]
    print(
        f"  {n} apps: {moved} slots placed again on another node (theirs went"
        f" offline); {len(extra)} apps needed more than {args.replicas} deploys"
        f" ({sum(r.deploys for r in batch)} deploy tasks in all)"
    )
    print()
    print("CPU during each measurement")
    for label, cpu in cpus.items():
        for line in cpu_lines(label, cpu):
            print(line)
    print()
    print(f"ratio {ratio:.2f}x (target within {TARGET:g}x: {verdict})")


def each(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


# -- main ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=50, help="apps updated at once (50)")
    parser.add_argument("--replicas", type=int, default=2, help="replicas of each app (2)")
    parser.add_argument("--runs", type=int, default=3, help="one-app measurements (3)")
    parser.add_argument(
        "--min-healthy", type=float, default=2, help="rollout.min_healthy_time, seconds (2)"
    )
    parser.add_argument(
        "--logs", type=Path, help="keep the CP's and agents' logs in this directory"
    )
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        raise SystemExit("the two extra Docker engines need root, unshare and ip")
    if not dockerlab.registry_available():
        raise SystemExit(f"no registry at {dockerlab.REGISTRY}")

    # The CP and agent processes import this checkout, like this script.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
    )
    client = engine_client(MAIN_ENGINE)
    with ExitStack() as stack:
        stack.callback(client.close)
        image_a, image_b = stack.enter_context(dockerlab.two_web_images(client, REPO, TAG))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        print("starting two extra Docker engines", flush=True)
        nodes = [Node("node-1", MAIN_ENGINE, client, main_dockerd_pid())]
        for index, octet in enumerate(free_octets(2), 2):
            engine = stack.enter_context(extra_engine(index, octet))
            other = engine_client(engine.url)
            stack.callback(other.close)
            nodes.append(Node(f"node-{index}", engine.url, other, engine.proc and engine.proc.pid))
        for node in nodes[1:]:  # no measurement includes a registry pull
            for ref in (image_a, image_b):
                node.client.images.pull(ref)
        logs = args.logs or tmp
        logs.mkdir(parents=True, exist_ok=True)
        log = stack.enter_context(open(logs / "cp.log", "wb"))
        url, cp_pid = stack.enter_context(control_plane(str(tmp / "cp"), log=log))
        run(stack, args, url, cp_pid, nodes, tmp, logs, image_a, image_b)


def run(
    stack: ExitStack,
    args: argparse.Namespace,
    url: str,
    cp_pid: int,
    nodes: list[Node],
    tmp: Path,
    logs: Path,
    image_a: str,
    image_b: str,
) -> None:
    bench = Bench(url, image_a, args)
    cluster_id = bench.cp.get("/api/version")["cluster_id"]
    agents: list[subprocess.Popen[bytes]] = []

    @stack.callback
    def clean_up() -> None:  # runs before the engines stop and the CP ends
        print("cleaning up", flush=True)
        for name in list(bench.names):
            with suppress(Exception):
                bench.cp.delete(f"/api/apps/{name}")
        with suppress(BaseException):
            wait_until(lambda: not bench.apps(), 300, "every app to be removed", every=1)
        for agent in agents:
            agent.terminate()
        for agent in agents:
            agent.wait()
        for node in nodes:
            for label in (f"docklet.cluster={cluster_id}", f"docklet.bench={TAG}"):
                for c in node.client.containers.list(all=True, filters={"label": label}):
                    c.remove(force=True)

    for node in nodes:
        agent_log = stack.enter_context((logs / f"agent-{node.name}.log").open("wb"))
        agent = start_agent(
            url,
            agent_log,
            DOCKLET_NODE_NAME=node.name,
            DOCKER_HOST=node.docker_url,
            DOCKLET_STATE_DIR=str(tmp / f"state-{node.name}"),
        )
        agents.append(agent)
        node.agent_pid = agent.pid
    wait_until(
        lambda: (
            sorted(
                n["node_id"] for n in bench.cp.get("/api/state/nodes") if n["status"] == "online"
            )
            == [n.name for n in nodes]
        ),
        60,
        "three nodes online",
    )
    load_before = os.getloadavg()
    names = [f"cr-{i:02d}" for i in range(args.apps)]
    solo_names = [f"cr-solo-{k}" for k in range(args.runs)]
    print(f"creating {len(names) + len(solo_names)} apps", flush=True)
    for name in names + solo_names:
        bench.create(name)
    unsettled = list(names + solo_names)
    wait_until(
        lambda: bench.first_revisions_stable(unsettled), 600, "every app's v1 to be stable", every=1
    )
    wait_until(bench.settled, 300, "the cluster to settle", every=1)
    placed = bench.cp.get("/api/state/nodes")
    print("containers per node: " + ", ".join(f"{n['node_id']} {n['containers']}" for n in placed))

    pids = {"CP": [cp_pid]}
    pids.update({f"agent {n.name[-1]}": [n.agent_pid] for n in nodes})
    # Each engine with its containerd (the main one's may serve others' containers too).
    pids.update({f"dockerd {n.name[-1]}": with_children(n.dockerd_pid) for n in nodes})
    cpus: dict[str, CPU] = {}
    solos = []
    solo_liveness: dict[str, Liveness] = {}
    for k, name in enumerate(solo_names):
        with CPU(pids) as cpu:
            r, seen = one_app(bench, name, image_b)
        cpus[f"one app (run {k + 1})"] = cpu
        bench.phases(r)
        solos.append(r)
        for node, w in seen.items():
            worst = solo_liveness.setdefault(node, Liveness())
            worst.longest_silence = max(worst.longest_silence, w.longest_silence)
            worst.statuses |= w.statuses
        print(
            f"one app, run {k + 1}: {r.finished_at - r.requested:6.2f} s to stable"
            f" (rollout {r.duration:.2f} s; seen at {r.seen - r.requested:.2f} s)",
            flush=True,
        )
        wait_until(bench.settled, 300, "the cluster to settle", every=1)

    print(f"updating {len(names)} apps at once", flush=True)
    with CPU(pids) as cpu:
        start, batch, liveness = all_apps(bench, names, image_b)
    cpus[f"{len(names)} apps at once"] = cpu
    last = max(r.finished_at for r in batch) - start
    print(f"{len(names)} apps at once: {last:6.2f} s until the last is stable", flush=True)
    for r in batch:
        bench.phases(r)
    metrics = bench.cp.get("/api/version")["metrics"]
    load_after = os.getloadavg()

    wait_until(bench.settled, 300, "the cluster to settle", every=1)
    print("Docker alone, for comparison", flush=True)
    alone = {
        "1 container": statistics.median(docker_alone(nodes[:1], image_b, 1) for _ in range(3)),
        f"{args.apps} at once": docker_alone(nodes, image_b, args.apps),
    }
    with CPU(pids) as cpu:
        alone[f"{args.apps * args.replicas} at once"] = docker_alone(
            nodes, image_b, args.apps * args.replicas
        )
    cpus[f"Docker alone, {args.apps * args.replicas} at once, then removed"] = cpu
    watched = {"one app": solo_liveness, f"{len(names)} apps": liveness}
    report(args, solos, start, batch, cpus, metrics, (load_before, load_after), alone, watched)


if __name__ == "__main__":
    main()
