"""Head-of-line blocking: does a queue of slow removals hold up an unrelated `docklet run`?

Starts its own control plane and agent (temporary data dir, loopback port)
on the local Docker engine, then times `docklet run IMAGE` until it shows
running:

- with nothing queued (the baseline);
- right after queueing the removal of N apps whose process ignores SIGTERM
  and whose stop grace period is long, so each removal takes the full grace.

The slow apps use IMAGE with STOPSIGNAL SIGTERM and `sh -c "trap '' TERM; ..."`,
so IMAGE needs a shell (the busybox test image has one). Without IMAGE, the
busybox web image of the tests is built (offline) and removed afterwards.
Every container and image the script made is removed at the end.

Usage: python benchmarks/head_of_line.py [IMAGE] [--apps 20] [--grace 10] [--concurrency N]
Target: the run behind the queue within 2x the baseline.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import docker
import docker.errors
from controlplane import BIN, admin, control_plane, start_agent

ROOT = Path(__file__).resolve().parent.parent
IGNORE_TERM = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
TAG = uuid.uuid4().hex[:8]

sys.path.insert(0, str(ROOT))  # the checkout this script is in, not an installed docklet
from docklet.wire.client import Client  # noqa: E402


@contextmanager
def images(client: docker.DockerClient, image: str | None) -> Iterator[tuple[str, str]]:
    """(IMAGE, a variant of it stopped with SIGTERM); removes what it built."""
    built = []
    try:
        if image is None:
            sys.path.insert(0, str(ROOT / "tests"))
            import dockerlab

            image = f"docklet-bench/web:{TAG}"
            dockerlab.build_web_image(client, image, {"docklet.bench": TAG})
            built.append(image)
        slow = f"docklet-bench/slow-stop:{TAG}"
        dockerfile = f"FROM {image}\nSTOPSIGNAL SIGTERM\n".encode()
        client.images.build(fileobj=io.BytesIO(dockerfile), tag=slow, pull=False, rm=True)
        built.append(slow)
        yield image, slow
    finally:
        for ref in reversed(built):
            with suppress(docker.errors.APIError):
                client.images.remove(ref, force=True)


def timed_run(docklet: list[str], image: str, name: str) -> float:
    """Seconds `docklet run` takes to show the app running."""
    started = time.perf_counter()
    subprocess.run([*docklet, "run", image, "--name", name], capture_output=True, check=True)
    return time.perf_counter() - started


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.2)


def apps(cp: Client) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in cp.get("/api/state/apps")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", help="a local image with a shell (default: build one)")
    parser.add_argument("--apps", type=int, default=20, help="slow apps to remove (20)")
    parser.add_argument("--grace", type=float, default=10, help="their stop grace, seconds (10)")
    parser.add_argument("--concurrency", type=int, help="the agent's (default: its own default)")
    args = parser.parse_args()

    # The CP, agent and CLI processes import this checkout, like this script.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
    )
    client = docker.from_env(version="auto")
    agent_env: dict[str, str] = {}
    if args.concurrency:
        agent_env["DOCKLET_CONCURRENCY"] = str(args.concurrency)
    cluster_id = ""
    with (
        images(client, args.image) as (image, slow),
        tempfile.TemporaryDirectory() as tmp,
        open(Path(tmp) / "procs.log", "wb") as log,
        control_plane(tmp, log=log) as (url, _pid),
    ):
        agent = start_agent(url, log, **agent_env)
        cp = admin(url)
        docklet = [str(BIN / "docklet"), "--cp", url]
        try:
            cluster_id = cp.get("/api/version")["cluster_id"]
            wait_until(lambda: cp.get("/api/state/nodes"), 30, "the agent to register")
            baseline, queued = measure(cp, docklet, image, slow, args)
        finally:
            agent.terminate()
            agent.wait()
            for c in client.containers.list(
                all=True, filters={"label": f"docklet.cluster={cluster_id}"}
            ):
                c.remove(force=True)
    print(f"docklet run, nothing queued:           {baseline:6.2f} s")
    print(f"docklet run, {args.apps} slow removals queued: {queued:6.2f} s")
    verdict = "met" if queued <= 2 * baseline else "MISSED"
    print(f"ratio {queued / baseline:.1f}x (target within 2x: {verdict})")


def measure(
    cp: Client, docklet: list[str], image: str, slow: str, args: argparse.Namespace
) -> tuple[float, float]:
    """(baseline seconds, seconds behind the queue of removals)."""
    baseline = timed_run(docklet, image, "hol-baseline")
    cp.delete("/api/apps/hol-baseline")
    wait_until(lambda: not apps(cp), 60, "the baseline app to be removed")

    names = [f"hol-slow-{n}" for n in range(args.apps)]
    for name in names:
        spec = {"name": name, "image": slow, "command": IGNORE_TERM}
        cp.post("/api/apps", {**spec, "stop_grace_period": f"{args.grace:g}s"})
    wait_until(
        lambda: all(a["actual"] == "running" for a in apps(cp).values()),
        120,
        "the slow apps to run",
    )
    for name in names:
        cp.delete(f"/api/apps/{name}")
    queued = timed_run(docklet, image, "hol-probe")
    still = sum(name.startswith("hol-slow-") for name in apps(cp))
    print(f"when the probe ran, {still} of {args.apps} slow apps were still being removed")

    cp.delete("/api/apps/hol-probe")
    drain = args.grace * (args.apps + 2) + 60  # even one at a time
    wait_until(lambda: not apps(cp), drain, "every removal to finish")
    return baseline, queued


if __name__ == "__main__":
    main()
