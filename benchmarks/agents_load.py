"""Load of many agents on one control plane (no Docker needed).

For each size N, starts a fresh `docklet-cp` on loopback and N agents in
several processes. Each agent is docklet's own `Agent` (registration,
heartbeats, task long-polls, leases, reports, backoff, re-registration: the
code `docklet-agent` runs) on a simulated Docker engine that keeps its
containers in memory and runs a task at once. Agents start spread over
`--ramp` seconds, as real ones do.

Then one commit pushed over Git/HTTP creates N apps of `--containers`
replicas each, so every node runs about that many containers of real apps;
the CP schedules them, the agents run them, and the benchmark times that
first deploy until every replica runs. After a warm-up it measures, for
`--seconds`: the agents' heartbeat latency, the calls a user makes (`docklet ps`'s `GET
/api/state/apps?brief=true` every 0.1 s, creating a 2-replica app every second, which
the agents then run), the CP's CPU time and RSS, its longest SQLite write
transaction, and every error any agent or user saw (timeouts, 503s, 401s).

With `--log-streams N`, N `docklet logs -f` streams (of N apps) are open while
measuring: relayed by the agents' own relay code (channel, followers, batches)
from a simulated container log that writes a line every `--log-line-every` (0.1 s).
Compare a run with and one without them (the CP needs `--cp-args "--log-streams N"`
beyond 16). Batches written up an agent's channel are counted apart from requests.
In use, each agent and each `docklet logs` terminal is on a machine of its own;
here they share the CP's two cores, so following logs costs this machine more
than it costs the CP. `--log-sink` is the control run for that: the agents
follow the same apps' containers with the same relay code and encode the same
batches, but throw them away, so the CP relays nothing; the readers are in a
process of their own (as terminals are), never in the one timing `ps`.

Usage: python benchmarks/agents_load.py [--agents 30,100,300,1000]
       [--containers 10] [--interval 5] [--seconds 30] [--processes 16]
       [--log-streams 20 --cp-args "--log-streams 20"] [--log-sink] [--log-line-every 0.1]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import multiprocessing
import os
import resource
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from controlplane import admin, control_plane

import docklet.agent.loop
from docklet.agent.engine import Outcome
from docklet.agent.loop import Agent
from docklet.agent.relay import WRITTEN
from docklet.agent.settings import AgentConfig
from docklet.common import defaults
from docklet.common.errors import APIError, DockletError
from docklet.wire.client import Client
from docklet.wire.protocol import Label, LeasedTask, LogBatch, LogContainer, LogRequest

POLL_WAIT = 20.0
IMAGE = "registry.bench:5000/app:1"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class SimEngine:
    """A Docker engine in memory: every task succeeds at once, containers keep running."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.lock = threading.Lock()
        self.containers: dict[str, dict[str, Any]] = {}  # by name

    def info(self) -> dict[str, Any]:
        return {"engine_id": f"bench-engine-{self.n}", "hostname": f"bench-{self.n}",
                "docker_version": "simulated"}  # fmt: skip

    def ping(self) -> None:
        pass

    def list_managed(self, cluster_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(c) for c in self.containers.values()]

    def deploy(self, task: LeasedTask, node_id: str, cluster_id: str) -> Outcome:
        spec = task.payload
        assert spec is not None
        container_id = hashlib.sha256(f"{self.n}/{task.container}".encode()).hexdigest()
        labels = {
            **spec.labels,
            Label.CLUSTER: cluster_id,
            Label.APP: task.app,
            Label.SLOT: str(task.slot),
            Label.REVISION: str(task.revision),
            Label.TASK: str(task.id),
            Label.NODE: node_id,
            Label.SPEC_HASH: spec.container_hash,
        }
        container = {
            "id": container_id,
            "name": task.container,
            "image": spec.image,
            "state": "running",
            "restarts": 0,
            "labels": {str(k): v for k, v in labels.items()},
            "started_at": time.time(),
        }
        with self.lock:
            for old in self.containers.values():
                if old["name"] in spec.replaces or old["id"] in spec.replaces:
                    old.update(state="exited", exit_code=0)
            self.containers[task.container] = container
        return Outcome(dict(container), image_digest=f"sha256:{container_id}")

    def stop(self, task: LeasedTask, cluster_id: str) -> dict[str, Any] | None:
        with self.lock:
            container = self.containers.get(task.container)
            if container is None:
                return None
            container.update(state="exited", exit_code=0)
            return dict(container)

    def remove(self, task: LeasedTask, cluster_id: str) -> None:
        with self.lock:
            self.containers.pop(task.container, None)

    def logs(
        self, name: str, *, tail: int, since: float | None, follow: bool, timestamps: bool
    ) -> SimLogs | None:
        with self.lock:
            known = name in self.containers
        return SimLogs(name, tail, follow) if known else None


LINE_EVERY = [0.1]  # seconds between a simulated container's lines (--log-line-every)


class SimLogs:
    """A container's log in memory: its last `tail` lines, then one every LINE_EVERY if
    followed."""

    def __init__(self, name: str, tail: int, follow: bool) -> None:
        self.name, self.tail, self.follow = name, min(tail, 10), follow
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()

    def __iter__(self) -> Any:
        for i in range(self.tail):
            yield time.time(), f"{self.name} earlier line {i}"
        n = 0
        while self.follow and not self.closed.wait(LINE_EVERY[0]):
            n += 1
            yield time.time(), f"{self.name} line {n}"


class Meter:
    """What one process's agents saw: heartbeat latencies, and errors by call."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.measuring = False
        self.beats: list[float] = []
        self.calls: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.ramp_errors: dict[str, int] = {}
        self.written = 0  # log batches written up a channel (no request)

    def ok(self, call: str, ms: float) -> None:
        with self.lock:
            if self.measuring:
                self.calls[call] = self.calls.get(call, 0) + 1
                if call == "heartbeat":
                    self.beats.append(ms)

    def error(self, call: str, exc: DockletError) -> None:
        status = exc.status if isinstance(exc, APIError) else "timeout/refused"
        with self.lock:
            into = self.errors if self.measuring else self.ramp_errors
            key = f"{call} {status}"
            into[key] = into.get(key, 0) + 1


def call_kind(method: str, path: str) -> str:
    if path.endswith("/heartbeat"):
        return "heartbeat"
    if path.endswith("/register"):
        return "register"
    if "/tasks?" in path:
        return "poll"
    if "/logs/" in path:
        return "log batch"
    return "report" if method == "POST" and "/tasks/" in path else path


def metered_client(meter: Meter) -> type[Client]:
    """The agents' HTTP client, timing each call and counting each error."""

    class MeteredClient(Client):
        def request(self, method: str, path: str, body: Any = None,
                    timeout: float | None = None, *, expect: Any = None) -> Any:  # fmt: skip
            kind, start = call_kind(method, path), time.perf_counter()
            try:
                answer = super().request(method, path, body, timeout, expect=expect)
            except DockletError as exc:
                meter.error(kind, exc)
                raise
            meter.ok(kind, (time.perf_counter() - start) * 1000)
            return answer

    return MeteredClient


def agent_process(
    url: str, join_token: str, numbers: list[int], args: argparse.Namespace, state: str,
    follow: Any, go: Any, done: Any, results: Any,
) -> None:  # fmt: skip
    """Many agents in this process: docklet's Agent on a SimEngine each."""
    logging.basicConfig(level=logging.ERROR)  # an agent's unexpected errors still show
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    meter = Meter()
    LINE_EVERY[0] = args.log_line_every
    docklet.agent.loop.Client = metered_client(meter)  # type: ignore[misc]
    agents = []
    for n in numbers:
        config = AgentConfig(
            cp=url,
            node_name=f"bench-{n}",
            join_token=join_token,
            state_dir=Path(state) / str(n),
            poll_wait=POLL_WAIT,
            log_level="ERROR",
            log_batch_every=args.log_batch_every,
        )
        agent = Agent(config, engine=SimEngine(n))
        post = sink if args.log_sink else agent.relay.post
        agent.relay.post = counted(post, meter)  # type: ignore[method-assign]
        agents.append(agent)
        threading.Thread(target=agent.run, daemon=True).start()
        time.sleep(args.ramp / max(1, len(numbers)))
    follow.wait()
    if args.log_sink:
        for agent in agents:
            follow_here(agent, {f"app{i}" for i in range(args.log_streams)})
    go.wait()
    with meter.lock:
        meter.measuring = True
    done.wait()
    with meter.lock:
        meter.measuring = False
        results.put((meter.beats, meter.errors, meter.ramp_errors, meter.calls, meter.written))
    for agent in agents:
        agent.stop.set()


DEVNULL = open(os.devnull, "wb")  # noqa: SIM115 (the process's life)


def sink(stream: str, batch: LogBatch) -> str:
    """--log-sink: a batch encoded as the channel would send it, then thrown away."""
    DEVNULL.write(json.dumps({"type": "batch", "stream": stream, **batch.model_dump()}).encode())
    return WRITTEN


def follow_here(agent: Agent, apps: set[str]) -> None:
    """--log-sink: what the CP would ask this node for the apps' `logs -f`, asked here."""
    assert isinstance(agent.engine, SimEngine)
    with agent.engine.lock:
        here = [c for c in agent.engine.containers.values() if c["labels"][Label.APP] in apps]
    for c in here:
        app, slot = c["labels"][Label.APP], int(c["labels"][Label.SLOT])
        label = f"{app}.{slot}@{agent.engine.info()['hostname']}"
        agent.relay.start(
            LogRequest(
                stream=f"{app}-{agent.engine.n}-{slot}",
                containers=[LogContainer(name=c["name"], slot=slot, label=label)],
                tail=10,
                follow=True,
            )
        )


def counted(post: Any, meter: Meter) -> Any:
    """The relay's post, counting the batches that went up the channel (no request)."""

    def post_counted(stream: str, batch: Any) -> Any:
        answer = post(stream, batch)
        if answer == WRITTEN:
            with meter.lock:
                meter.written += meter.measuring
        return answer

    return post_counted


def push_apps(url: str, count: int, replicas: int, workdir: Path) -> None:
    """One commit creating `count` apps, pushed over Git/HTTP as a user would."""
    token = os.environ["DOCKLET_TOKEN"]
    remote = url.replace("http://", f"http://bench:{token}@") + "/git/apps.git"
    checkout = workdir / "apps-checkout"
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "clone", "-q", remote, str(checkout)], check=True)
    (checkout / "apps").mkdir(exist_ok=True)
    for i in range(count):
        (checkout / "apps" / f"app{i}.yaml").write_text(
            f"name: app{i}\nimage: {IMAGE}\nreplicas: {replicas}\n"
        )
    subprocess.run([*git, "-C", str(checkout), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(checkout), "commit", "-qm", f"{count} apps"], check=True)
    subprocess.run([*git, "-C", str(checkout), "push", "-q", "origin", "HEAD"], check=True)


def running_replicas(client: Client) -> tuple[int, int]:
    apps = client.get("/api/state/apps?brief=true", timeout=60)
    return sum(a["running"] for a in apps), sum(a["replicas"] for a in apps)


def patiently(call: Any, patience: float = 60) -> Any:
    """`call()`, retried through 503s and timeouts for up to `patience` seconds."""
    deadline = time.monotonic() + patience
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


def measure_user(client: Client, seconds: float) -> tuple[list[float], list[float], dict]:
    """`ps` every 0.1 s and a new app every second, timed; errors counted."""
    reads: list[float] = []
    writes: list[float] = []
    errors: dict[str, int] = {}
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        for call, timed in (("ps", reads), ("create", writes)):
            if call == "create" and n % 10:
                continue
            start = time.perf_counter()
            try:
                if call == "ps":
                    client.get("/api/state/apps?brief=true")  # what `docklet ps` asks
                else:
                    client.post("/api/apps", {"name": f"load-{n}", "image": IMAGE, "replicas": 2})
                timed.append((time.perf_counter() - start) * 1000)
            except DockletError as exc:
                kind = f"user {call} {getattr(exc, 'status', 'timeout')}"
                errors[kind] = errors.get(kind, 0) + 1
        n += 1
        time.sleep(0.1)
    return reads, writes, errors


class LogReader:
    """`docklet logs -f` of one app, as the CLI asks for it: counts the lines it reads."""

    def __init__(self, url: str, app: str) -> None:
        self.url, self.app = url, app
        self.lines = 0
        self.error = ""
        self._conn: http.client.HTTPConnection | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        parts = urlsplit(self.url)
        self._conn = conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
        try:
            conn.request(
                "GET",
                f"/api/apps/{self.app}/logs?follow=1&tail=10",
                headers={"Authorization": f"Bearer {os.environ['DOCKLET_TOKEN']}"},
            )
            answer = conn.getresponse()
            if answer.status != 200:
                self.error = f"logs {answer.status}"
                return
            for raw in iter(answer.readline, b""):
                if raw.startswith(b"data: "):
                    self.lines += 1
        except (OSError, http.client.HTTPException) as exc:
            if self._conn is not None:
                self.error = f"logs {type(exc).__name__}"

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.sock is not None:
            conn.sock.shutdown(2)


def reader_process(url: str, apps: list[str], go: Any, done: Any, results: Any) -> None:
    """The `docklet logs -f` terminals, in a process of their own as they are in use: their
    reading must not share a GIL with the `ps` calls being timed."""
    readers = [LogReader(url, app) for app in apps]
    go.wait()
    before = sum(r.lines for r in readers)
    done.wait()
    lines = sum(r.lines for r in readers) - before
    for reader in readers:
        reader.close()
    errors: dict[str, int] = {}
    for reader in readers:
        if reader.error:
            errors[reader.error] = errors.get(reader.error, 0) + 1
    results.put((lines, errors))


def run_size(size: int, args: argparse.Namespace) -> dict[str, Any]:
    flags = ("--heartbeat-interval", str(args.interval), "--log-level", args.cp_log_level)
    flags += ("--threads", str(args.cp_threads)) if args.cp_threads else ()
    flags += tuple(args.cp_args.split())
    log = open(args.cp_log, "ab") if args.cp_log else None  # noqa: SIM115 (closed below)
    with (
        tempfile.TemporaryDirectory() as tmp,
        control_plane(tmp + "/cp", *flags, log=log) as (url, pid),
    ):
        client = admin(url)
        mp = multiprocessing.get_context("fork")
        follow, go, done, results = mp.Event(), mp.Event(), mp.Event(), mp.Queue()
        processes = max(1, min(args.processes, size))
        groups = [list(range(size))[i::processes] for i in range(processes)]
        join = os.environ["DOCKLET_JOIN_TOKEN"]
        workers = [
            mp.Process(
                target=agent_process,
                args=(url, join, g, args, tmp + "/agents", follow, go, done, results),
                daemon=True,
            )
            for g in groups
        ]
        for w in workers:
            w.start()
        time.sleep(args.ramp)
        started = time.monotonic()
        push_apps(url, size, args.containers, Path(tmp))
        running = wanted = 0
        while time.monotonic() - started < args.deploy_timeout:
            running, wanted = patiently(lambda: running_replicas(client), args.deploy_timeout)
            if wanted and running >= wanted:
                break
            time.sleep(1)
        deployed = time.monotonic() - started
        follow.set()
        apps = [] if args.log_sink else [f"app{i}" for i in range(min(args.log_streams, size))]
        relayed_out = mp.Queue()
        reading = mp.Process(
            target=reader_process, args=(url, apps, go, done, relayed_out), daemon=True
        )
        reading.start()
        time.sleep(args.warmup)
        go.set()
        cpu0, t0, wall0 = cpu_seconds(pid), time.monotonic(), time.time()
        generators = [w.pid for w in workers if w.pid] + [reading.pid or 0]
        gen0 = sum(cpu_seconds(p) for p in generators)
        reads, writes, errors = measure_user(client, args.seconds)
        busy = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        gen_busy = (sum(cpu_seconds(p) for p in generators) - gen0) / (time.monotonic() - t0)
        rss = rss_mb(pid)
        done.set()
        relayed, reader_errors = relayed_out.get(timeout=60)
        merge(errors, reader_errors)
        reading.join(timeout=10)
        metrics = patiently(lambda: client.get("/api/version")["metrics"])
        nodes = patiently(lambda: client.get("/api/state/nodes"))
        beats: list[float] = []
        ramp: dict[str, int] = {}
        calls: dict[str, int] = {}
        written = 0
        for _ in workers:
            b, e, r, c, w = results.get(timeout=60)
            written += w
            beats += b
            merge(errors, e)
            merge(ramp, r)
            merge(calls, c)
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()
    if log is not None:
        log.close()
    return {
        "agents": size,
        "deployed": deployed,
        "running": f"{running}/{wanted}",
        "complete": bool(wanted) and running >= wanted,
        "beats": beats,
        "reads": reads,
        "writes": writes,
        "cpu": busy * 100,
        "gen_cpu": gen_busy * 100,
        "rss": rss,
        "deploy_write": metrics["longest_write_ms"],
        # The longest write while measuring: the CP keeps its newest slow ones (> 20 ms).
        "slow": [w for w in metrics["slow_writes"] if w["at"] >= wall0],
        "online": sum(1 for x in nodes if x["status"] == "online"),
        "errors": errors,
        "ramp_errors": ramp,
        "rate": sum(calls.values()) / args.seconds,
        "log_lines": relayed / args.seconds,
        "written": written / args.seconds,
        "log_batches": calls.get("log batch", 0) / args.seconds,
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", default="30,100,300,1000", help="sizes, comma-separated")
    parser.add_argument("--containers", type=int, default=10, help="per agent, from real apps")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--ramp", type=float, default=10, help="seconds over which agents start")
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--deploy-timeout", type=float, default=300)
    parser.add_argument("--cp-threads", type=int, default=0, help="the CP's --threads (default)")
    parser.add_argument("--cp-log", default="", help="a file for the CP's log (default: stderr)")
    parser.add_argument("--cp-args", default="", help="more docklet-cp options, space-separated")
    parser.add_argument("--cp-log-level", default="WARNING")
    parser.add_argument(
        "--log-streams", type=int, default=0, help="`docklet logs -f` streams open while measuring"
    )
    parser.add_argument(
        "--log-sink",
        action="store_true",
        help="the control run: the agents follow the same apps' logs (the same work on this"
        " machine's cores) but throw their batches away; the CP relays nothing",
    )
    parser.add_argument(
        "--log-batch-every", type=float, default=defaults.LOG_BATCH_EVERY, help="the agents' own"
    )
    parser.add_argument(
        "--log-line-every", type=float, default=0.1, help="seconds between a container's lines"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.agents.split(",")]
    print(
        f"agents × {args.containers} containers (N apps × {args.containers} replicas),"
        f" heartbeat every {args.interval:g}s, long-poll {POLL_WAIT:g}s,"
        f" {args.processes} agent processes, {args.seconds:g}s measured after the first"
        f" deploy + {args.warmup:g}s warm-up, CP threads {args.cp_threads or 'default'},"
        f" {args.log_streams} log streams"
        f" {'followed into a sink, the CP relaying none' if args.log_sink else 'open'}"
        f" (a batch every {args.log_batch_every:g}s,"
        f" a line every {args.log_line_every:g}s a container)"
    )
    header = (
        f"{'agents':>6} | {'deploy s':>8} | {'heartbeat p50/p99 ms':>20} |"
        f" {'user ps p50/p99 ms':>18} | {'create p50/p99 ms':>18} | {'agent req/s':>11} |"
        f" {'longest write ms':>16} | {'CP CPU %':>8} | {'CP RSS MB':>9} | {'online':>6} | errors"
    )
    print(header)
    print("-" * len(header))
    for size in sizes:
        r = run_size(size, args)
        errors = sum(r["errors"].values())
        detail = f" {r['errors']}" if errors else ""
        ramp = f" (ramp: {r['ramp_errors']})" if r["ramp_errors"] else ""
        slowest = max((w["ms"] for w in r["slow"]), default=0.0)
        longest = f"{slowest:.1f}" if slowest else "< 20"  # the CP keeps those over 20 ms
        print(
            f"{size:>6} | {r['deployed']:8.1f} |"
            f" {median(r['beats']):8.1f} / {pct(r['beats'], 0.99):8.1f} |"
            f" {median(r['reads']):7.1f} / {pct(r['reads'], 0.99):7.1f} |"
            f" {median(r['writes']):7.1f} / {pct(r['writes'], 0.99):7.1f} |"
            f" {r['rate']:11.0f} | {longest:>16} | {r['cpu']:8.0f} |"
            f" {r['rss']:9.0f} | {r['online']:>6} | {errors}{detail}{ramp}"
            + ("" if r["complete"] else f" (deployed only {r['running']})"),
            flush=True,
        )
        slow = ", ".join(f"{w['in']} {w['ms']:.0f} ms" for w in r["slow"][-5:])
        print(
            f"{'':>6}   writes over 20 ms while measuring: {len(r['slow'])} {slow};"
            f" longest since the CP started (first deploy included): {r['deploy_write']:.0f} ms;"
            f" the load generator's CPU (agents, log readers): {r['gen_cpu']:.0f} %"
        )
        if args.log_streams:
            print(
                f"{'':>6}   log lines relayed to the streams' readers: {r['log_lines']:.0f}/s;"
                f" batches up channels {r['written']:.0f}/s, by POST {r['log_batches']:.0f}/s"
            )


if __name__ == "__main__":
    main()
