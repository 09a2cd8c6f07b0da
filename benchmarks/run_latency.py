"""How long `docklet run` takes to show `running`, next to a plain `docker run -d`.

Starts its own control plane and agent (temporary data dir, loopback port)
on the local Docker engine, then times, for the same local image:

- `docklet run IMAGE --name bench-N` until it exits (it returns once the CP
  reports the container running), followed by `docklet rm`;
- `docker run -d IMAGE` until it exits (Docker returns once the container
  started), followed by `docker rm -f`.

Usage: python benchmarks/run_latency.py IMAGE [--runs 7]
Prints the median, min and max of each, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from controlplane import BIN, control_plane, start_agent


def timed(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return (time.perf_counter() - start) * 1000, done.stdout.strip()


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name:<22} median {statistics.median(values):7.0f} ms"
        f"   min {min(values):6.0f}   max {max(values):6.0f}   (n={len(values)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory() as tmp,
        open(Path(tmp) / "procs.log", "wb") as log,
        control_plane(tmp, log=log) as (url, _pid),
    ):
        agent = start_agent(url, log)
        docklet = [str(BIN / "docklet"), "--cp", url]
        try:
            while not json.loads(
                subprocess.run([*docklet, "nodes", "--json"], capture_output=True, text=True).stdout
            ):
                time.sleep(0.1)
            ours, theirs = [], []
            for n in range(args.runs):
                ms, _ = timed([*docklet, "run", args.image, "--name", f"bench-{n}"])
                ours.append(ms)
                subprocess.run([*docklet, "rm", f"bench-{n}"], capture_output=True, check=True)
                ms, cid = timed(["docker", "run", "-d", args.image])
                theirs.append(ms)
                subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=True)
            # Let the last removal finish before the agent goes.
            while json.loads(
                subprocess.run([*docklet, "ps", "--json"], capture_output=True, text=True).stdout
            ):
                time.sleep(0.1)
        finally:
            agent.terminate()
            agent.wait()
    print(summary("docklet run → running", ours))
    print(summary("docker run -d", theirs))


if __name__ == "__main__":
    main()
