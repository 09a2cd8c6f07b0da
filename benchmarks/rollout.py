"""Rolling updates, Docklet next to Docker Swarm on the same engine.

Starts its own control plane and agent (temporary data dir, loopback port) on
the local Docker engine, and makes that engine a single-node Swarm
(`docker swarm init --advertise-addr 127.0.0.1`; it must not be in a swarm
already). Two busybox web images, A and B, are built offline
(tests/dockerlab.py) and pushed to the local registry (127.0.0.1:5000), so
both can pull them. Then, --runs times, for each of Docklet and Swarm:

- one replica of A, its port 80 published on a fresh loopback port (Docklet:
  POST /api/apps with `rollout.min_healthy_time`; Swarm: `docker service
  create --publish mode=host,... --update-monitor M --update-failure-action
  rollback`);
- update to B (good): timed from the command's start until `docklet update`
  exits 0, or until Swarm's UpdateStatus.State is `completed`;
- update to a tag absent from the registry (bad): timed until `docklet
  update` exits 1 saying "rolled back", or until Swarm's UpdateStatus.State
  is `rollback_completed`;
- during each update a thread polls http://127.0.0.1:PORT/ every 50 ms and
  counts the requests that fail (and the longest stretch of failures).

Prints every run, then medians in a table; the good update also with the
min_healthy_time / update-monitor wait (M) subtracted. Removes everything it
made: the Docklet apps and containers, the services, the swarm (`docker
swarm leave --force`, and docker_gwbridge if the init created it), and the
local image tags it built or pushed (the registry keeps its two tags).

Usage: python benchmarks/rollout.py [--runs 3] [--monitor 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from controlplane import BIN, admin, control_plane, free_port, start_agent

ROOT = Path(__file__).resolve().parent.parent
TAG = uuid.uuid4().hex[:8]
REPO = "docklet-bench/rollout"
POLL = 0.05  # seconds between two HTTP requests of the poller
STATE_POLL = 0.1  # seconds between two `docker service inspect`s

sys.path.insert(0, str(ROOT))  # the checkout this script is in, not an installed docklet
sys.path.insert(0, str(ROOT / "tests"))
import dockerlab  # noqa: E402


class Poller:
    """Hits a URL every 50 ms from a thread, counting failed requests and the longest outage."""

    def __init__(self, url: str) -> None:
        self.url, self.ok, self.failed = url, 0, 0
        self.longest = 0.0  # seconds from the first to the end of the last failure of a streak
        self._streak_start: float | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(POLL):
            started = time.monotonic()
            try:
                urllib.request.urlopen(self.url, timeout=1).read()
                self.ok += 1
                self._streak_start = None
            except OSError:
                self.failed += 1
                if self._streak_start is None:
                    self._streak_start = started
                self.longest = max(self.longest, time.monotonic() - self._streak_start)

    def __enter__(self) -> Poller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@dataclass
class Sample:
    seconds: float
    failed: int
    ok: int
    outage: float
    note: str = ""  # Docklet's last line, or Swarm's state changes ("+seconds state")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with suppress(Exception):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def serves(url: str, text: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as resp:
        return text in resp.read().decode()


@contextmanager
def images(client: docker.DockerClient) -> Iterator[tuple[str, str, str]]:
    """(A, B, a missing tag), A and B pushed to the local registry; removes the local tags."""
    with dockerlab.two_web_images(client, REPO, TAG) as (a, b):
        yield a, b, f"{dockerlab.REGISTRY}/{REPO}:missing-{TAG}"


# -- Docklet ---------------------------------------------------------------------


class Docklet:
    def __init__(self, url: str, monitor: float) -> None:
        self.cp = admin(url)
        self.cli = [str(BIN / "docklet"), "--cp", url]
        self.monitor = monitor
        self.names: list[str] = []

    def status(self, name: str) -> str | None:
        apps = {a["name"]: a for a in self.cp.get("/api/state/apps")}
        return apps[name]["status"] if name in apps else None

    def update(self, name: str, image: str, url: str, expect_ok: bool) -> Sample:
        with Poller(url) as poller:
            started = time.perf_counter()
            done = subprocess.run(
                [*self.cli, "update", name, "--image", image, "--timeout", "600"],
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - started
        out = done.stdout + done.stderr
        if expect_ok and done.returncode != 0:
            raise SystemExit(f"docklet update {name} to {image} failed:\n{out}")
        if not expect_ok and (done.returncode != 1 or "rolled back" not in out):
            raise SystemExit(f"docklet update {name} to {image}: expected a rollback:\n{out}")
        last = out.strip().splitlines()[-1] if out.strip() else ""
        return Sample(seconds, poller.failed, poller.ok, poller.longest, last)

    def run(self, n: int, a: str, b: str, missing: str) -> tuple[Sample, Sample]:
        name = f"ro-bench-{n}"
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        self.names.append(name)
        self.cp.post(
            "/api/apps",
            {
                "name": name,
                "image": a,
                "ports": [f"127.0.0.1:{port}:80"],
                "rollout": {"min_healthy_time": f"{self.monitor:g}s"},
            },
        )
        wait_until(lambda: self.status(name) == "stable", 120, f"{name} v1 to be stable")
        wait_until(lambda: serves(url, f"a-{TAG}"), 30, f"{name} to serve A")
        good = self.update(name, b, url, expect_ok=True)
        wait_until(lambda: serves(url, f"b-{TAG}"), 30, f"{name} to serve B")
        bad = self.update(name, missing, url, expect_ok=False)
        wait_until(lambda: self.status(name) == "stable", 60, f"{name} to be stable again")
        self.remove(name)
        return good, bad

    def remove(self, name: str) -> None:
        with suppress(Exception):
            self.cp.delete(f"/api/apps/{name}")
        wait_until(lambda: self.status(name) is None, 120, f"{name} to be removed")
        self.names.remove(name)


# -- Swarm -----------------------------------------------------------------------


def docker_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)} failed: {done.stderr.strip()}")
    return done


class Swarm:
    def __init__(self, client: docker.DockerClient, monitor: float) -> None:
        self.api = client.api
        self.client = client
        self.monitor = monitor
        self.services: list[str] = []

    def state(self, name: str) -> str | None:
        status = self.api.inspect_service(name).get("UpdateStatus") or {}
        return status.get("State")

    def tasks(self, name: str) -> str:
        """The service's tasks, newest first, as `STATE (error)`: what a rollback went through."""
        tasks = sorted(
            self.api.tasks(filters={"service": name}), key=lambda t: t["CreatedAt"], reverse=True
        )
        return "; ".join(
            t["Status"]["State"] + (f" ({t['Status']['Err']})" if t["Status"].get("Err") else "")
            for t in tasks
        )

    def update(self, name: str, image: str, url: str, want: str) -> Sample:
        with Poller(url) as poller:
            started = time.perf_counter()
            docker_cli("service", "update", "--detach", "--image", image, name)
            deadline = time.monotonic() + 600
            seen: list[str] = []
            while (state := self.state(name)) != want:
                if not seen or seen[-1].split(" ", 1)[1] != str(state):
                    seen.append(f"+{time.perf_counter() - started:.1f}s {state}")
                if state in ("paused", "rollback_paused", "rollback_completed", "completed"):
                    raise SystemExit(f"service {name} to {image}: {state}, expected {want}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"service {name} to {image}: still {state} after 600s")
                time.sleep(STATE_POLL)
            seconds = time.perf_counter() - started
        seen.append(f"+{seconds:.1f}s {state}")
        note = ", ".join(seen) + f"; tasks: {self.tasks(name)}"
        return Sample(seconds, poller.failed, poller.ok, poller.longest, note)

    def run(self, n: int, a: str, b: str, missing: str) -> tuple[Sample, Sample]:
        name = f"docklet-bench-{TAG}-{n}"
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        self.services.append(name)
        docker_cli(
            "service", "create", "--detach", "--name", name, "--replicas", "1",
            "--label", f"docklet.bench={TAG}",
            "--publish", f"mode=host,published={port},target=80",
            "--update-monitor", f"{self.monitor:g}s", "--update-failure-action", "rollback",
            a,
        )  # fmt: skip
        wait_until(lambda: serves(url, f"a-{TAG}"), 120, f"service {name} to serve A")
        good = self.update(name, b, url, "completed")
        wait_until(lambda: serves(url, f"b-{TAG}"), 30, f"service {name} to serve B")
        bad = self.update(name, missing, url, "rollback_completed")
        self.remove(name)
        return good, bad

    def containers(self, name: str) -> list[Any]:
        label = f"com.docker.swarm.service.name={name}"
        return self.client.containers.list(all=True, filters={"label": label})

    def remove(self, name: str) -> None:
        docker_cli("service", "rm", name, check=False)
        wait_until(lambda: not self.containers(name), 60, f"service {name}'s containers to go")
        self.services.remove(name)


@contextmanager
def swarm_mode(client: docker.DockerClient) -> Iterator[None]:
    """Make the engine a one-node swarm for the block; leave it (and what init made) after."""
    if client.info()["Swarm"]["LocalNodeState"] != "inactive":
        raise SystemExit(
            "the engine is in a swarm already; this benchmark makes and leaves its own"
        )
    had_gwbridge = bool(client.networks.list(names=["docker_gwbridge"]))
    try:
        docker_cli("swarm", "init", "--advertise-addr", "127.0.0.1")
        yield
    finally:
        docker_cli("swarm", "leave", "--force", check=False)
        if not had_gwbridge:
            for net in client.networks.list(names=["docker_gwbridge"]):
                with suppress(docker.errors.APIError):
                    net.reload()
                    if not net.attrs.get("Containers"):
                        net.remove()


# -- the report ------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values)


def report(results: dict[str, dict[str, list[Sample]]], monitor: float) -> None:
    print()
    print("Each run (seconds; failed HTTP requests / all; longest outage)")
    for system, cases in results.items():
        for case, samples in cases.items():
            for n, s in enumerate(samples):
                print(
                    f"  {system:<7} {case:<8} run {n + 1}: {s.seconds:6.2f} s"
                    f"   failed {s.failed:3d}/{s.failed + s.ok:<4d} outage {s.outage:5.2f} s"
                )
                print(f"      {s.note}")
    d, s = results["Docklet"], results["Swarm"]

    def both(case: str, of: Callable[[Sample], float]) -> tuple[list[float], list[float]]:
        return [of(x) for x in d[case]], [of(x) for x in s[case]]

    rows = [
        ("good update → stable, raw (s)", *both("good", lambda x: x.seconds)),
        (f"good update − M={monitor:g}s (s)", *both("good", lambda x: x.seconds - monitor)),
        ("bad image → rolled back (s)", *both("bad", lambda x: x.seconds)),
        ("failed requests, good update", *both("good", lambda x: x.failed)),
        ("failed requests, bad update", *both("bad", lambda x: x.failed)),
        ("longest outage, good update (s)", *both("good", lambda x: x.outage)),
        ("longest outage, bad update (s)", *both("bad", lambda x: x.outage)),
    ]
    print()
    print(
        f"Medians of {len(d['good'])} run(s), 1 replica,"
        f" M = min_healthy_time = --update-monitor = {monitor:g}s"
    )
    print(f"| {'measure':<34} | {'Docklet':>8} | {'Swarm':>8} | {'Docklet runs':<20} | Swarm runs")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 10}|{'-' * 22}|{'-' * 22}")
    for label, ours, theirs in rows:
        print(
            f"| {label:<34} | {med(ours):8.2f} | {med(theirs):8.2f}"
            f" | {each(ours):<20} | {each(theirs)}"
        )


def each(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="measurements of each (3)")
    parser.add_argument(
        "--monitor", type=float, default=5, help="min_healthy_time = --update-monitor, s (5)"
    )
    args = parser.parse_args()
    if not dockerlab.registry_available():
        raise SystemExit(f"no registry at {dockerlab.REGISTRY}")

    # The CP, agent and CLI processes import this checkout, like this script.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
    )
    client = docker.from_env(version="auto")
    results: dict[str, dict[str, list[Sample]]] = {
        "Docklet": {"good": [], "bad": []},
        "Swarm": {"good": [], "bad": []},
    }
    cluster_id = ""
    with (
        images(client) as (a, b, missing),
        tempfile.TemporaryDirectory() as tmp,
        open(Path(tmp) / "procs.log", "wb") as log,
        control_plane(tmp, log=log) as (url, _pid),
    ):
        agent = start_agent(url, log)
        ours, swarm = Docklet(url, args.monitor), Swarm(client, args.monitor)
        try:
            cluster_id = ours.cp.get("/api/version")["cluster_id"]
            wait_until(lambda: ours.cp.get("/api/state/nodes"), 30, "the agent to register")
            with swarm_mode(client):
                try:
                    for n in range(args.runs):
                        for system, bench in (("Docklet", ours), ("Swarm", swarm)):
                            good, bad = bench.run(n, a, b, missing)
                            results[system]["good"].append(good)
                            results[system]["bad"].append(bad)
                            print(
                                f"run {n + 1} {system:<7}: good {good.seconds:6.2f} s"
                                f" ({good.failed} failed), bad {bad.seconds:6.2f} s"
                                f" ({bad.failed} failed)",
                                flush=True,
                            )
                finally:
                    for name in list(swarm.services):
                        with suppress(BaseException):
                            swarm.remove(name)
        finally:
            for name in list(ours.names):
                with suppress(BaseException):
                    ours.remove(name)
            agent.terminate()
            agent.wait()
            if cluster_id:
                for c in client.containers.list(
                    all=True, filters={"label": f"docklet.cluster={cluster_id}"}
                ):
                    c.remove(force=True)
    report(results, args.monitor)


if __name__ == "__main__":
    main()
