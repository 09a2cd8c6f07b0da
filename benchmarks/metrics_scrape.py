"""What one GET /metrics costs at a thousand apps of ten containers each.

Builds the cluster in this process with benchmarks/restart.py's `build` (a
real SQLite file and Git repository, N nodes, N apps of C replicas, every
task reported done, every node's heartbeat listing its containers), then
times scrapes through the CP's WSGI app with a read token:

- the first one after the build, which counts the build's rollouts and
  tasks (10,000 rows taken in by id);
- a scrape with nothing changed since the last (the `ps` list kept);
- a scrape after one app changed (the `ps` list rebuilt: the worst case a
  scrape meets while the cluster changes).

Usage: python benchmarks/metrics_scrape.py [--nodes 1000] [--containers 10]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from restart import beat_all, build

from docklet.common.status import TokenScope
from docklet.cp.http.api import make_app
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.settings import CPConfig


def scrape(app: Any, token: str) -> tuple[float, int]:
    """One GET /metrics: (ms, bytes)."""
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/metrics",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "HTTP_AUTHORIZATION": f"Bearer {token}",
    }
    start = time.perf_counter()
    body = b"".join(app(environ, lambda *a: None))
    return (time.perf_counter() - start) * 1000, len(body)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--containers", type=int, default=10, help="per node (replicas per app)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = CPConfig(data_dir=Path(tmp), heartbeat_interval=30.0, log_level="WARNING")
        cp = ControlPlane(config)
        token = cp.tokens.create("bench", TokenScope.READ, "bench")
        started = time.perf_counter()
        agents = build(cp, args.nodes, args.containers)
        beat_all(cp, agents)
        built = time.perf_counter() - started
        app = make_app(cp)
        first_ms, size = scrape(app, token)
        kept = [scrape(app, token)[0] for _ in range(20)]
        changed = []
        for i in range(5):
            cp.apps.update(f"app{i}", {"env": {"N": str(i)}}, "bench <bench@localhost>")
            changed.append(scrape(app, token)[0])
        print(
            f"{args.nodes} nodes, {args.nodes} apps x {args.containers} containers"
            f" (built in {built:.0f}s); an answer of {size // 1024} KiB"
        )
        print(f"first scrape (takes in {args.nodes * args.containers} tasks): {first_ms:.0f} ms")
        print(f"scrape, nothing changed: median {statistics.median(kept):.1f} ms")
        print(f"scrape, one app changed: median {statistics.median(changed):.0f} ms")
        cp.store.close()


if __name__ == "__main__":
    main()
