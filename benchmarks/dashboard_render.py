"""The dashboard at size: how long the CP takes to render each page with 1,000 apps and
10,000 containers.

Builds the state in this process as restart.py does (real SQLite and Git in a
temporary directory, simulated agents reporting through the CP's own code),
signs a browser session in, and requests each page through the real WSGI app
(the dashboard in front of the API, as docklet-cp serves it; no sockets), a
number of times each. Two figures per page:

- kept: nothing changed between requests (the app list `docklet ps` reads is
  kept while the store's version holds; what a page left open mostly sees);
- changed: a container's state changes before every request (a heartbeat that
  moves the store's version), so the app list is rebuilt for every request.

It also counts what a live page costs: the parts an open page fetches after an
event, fetched again with nothing changed (served as rendered), and after a change.

Target: p95 ≤ 100 ms for every page.

Usage: python benchmarks/dashboard_render.py [--nodes 1000] [--containers 10] [--runs 30]
"""

from __future__ import annotations

import argparse
import gc
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from restart import beat_all, build  # a sibling script, not a package

from docklet.common.status import TokenScope
from docklet.cp.http.api import make_app
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.settings import CPConfig
from docklet.cp.ui.mount import dashboard
from docklet.wire.protocol import Heartbeat

TARGET_MS = 100.0


def requester(app: Any, session_id: str) -> Callable[[str], tuple[int, int]]:
    """GET a path through WSGI with the session's cookie: (status, bytes)."""

    def get(path: str) -> tuple[int, int]:
        path, _, query = path.partition("?")
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": "bench",
            "SERVER_PORT": "80",
            "HTTP_HOST": "bench",
            "HTTP_COOKIE": f"docklet_session={session_id}",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": sys.stderr,
        }
        status: list[str] = []
        body = b"".join(app(environ, lambda s, h, *a: status.append(s)))
        return int(status[0].split()[0]), len(body)

    return get


def timed(get: Callable[[str], tuple[int, int]], path: str, runs: int, before: Callable[[], None]):
    """p50 and p95 of `runs` requests in ms, and the answer's size; `before` runs untimed."""
    times, size = [], 0
    for _ in range(runs):
        before()
        start = time.perf_counter()
        status, size = get(path)
        times.append((time.perf_counter() - start) * 1000)
        assert status == 200, f"{path}: {status}"
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return statistics.median(times), p95, size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000, help="nodes, and apps (one per node)")
    parser.add_argument("--containers", type=int, default=10, help="replicas per app")
    parser.add_argument("--runs", type=int, default=30, help="requests per page and figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = CPConfig(data_dir=Path(tmp), heartbeat_interval=60.0, log_level="WARNING")
        cp = ControlPlane(config)
        start = time.perf_counter()
        agents = build(cp, args.nodes, args.containers)
        beat_all(cp, agents)
        cp.liveness.flush_seen()
        secret = cp.tokens.create("bench", TokenScope.ADMIN, "bench")
        session_id, _ = cp.sessions.sign_in(secret, "127.0.0.1")
        app = dashboard(cp, make_app(cp))
        gc.freeze()  # as docklet-cp does once started: what it holds is not scanned again
        get = requester(app, session_id)
        apps = cp.views.apps()
        running = sum(a["running"] for a in apps)
        print(
            f"{args.nodes} nodes, {len(apps)} apps, {running} containers running"
            f" (built in {time.perf_counter() - start:.0f}s); {args.runs} requests a figure"
        )

        node_id, (_token, containers) = next(iter(agents.items()))
        flipped = [dict(c) for c in containers]

        def change() -> None:
            """One container's state changes: the store's version moves on."""
            flipped[0]["state"] = "exited" if flipped[0]["state"] == "running" else "running"
            cp.agents.heartbeat(node_id, Heartbeat(containers=flipped, report_seq=10**9))

        pages = [
            ("apps, first page", "/ui/apps"),
            ("apps, page 10", "/ui/apps?page=10"),
            ("apps, filtered (q=app12)", "/ui/apps?q=app12"),
            ("apps, filtered (status=stable)", "/ui/apps?status=stable&page=3"),
            ("one app", "/ui/apps/app1"),
            ("nodes", "/ui/nodes"),
            ("events", "/ui/events"),
            ("part: apps rows", "/ui/parts/apps?page=2"),
            ("part: one app's containers", "/ui/apps/app1/containers"),
            ("part: one app's rollouts", "/ui/apps/app1/rollouts"),
        ]
        rows = []
        worst = 0.0
        for what, path in pages:
            get(path)  # templates compiled, caches warm
            kept = timed(get, path, args.runs, lambda: None)
            changed = timed(get, path, args.runs, change)
            worst = max(worst, kept[1], changed[1])
            rows.append((what, kept, changed))
        width = max(len(r[0]) for r in rows)
        print(f"{'page':<{width}} | kept p50 / p95 ms | changed p50 / p95 ms | size")
        for what, kept, changed in rows:
            print(
                f"{what:<{width}} | {kept[0]:7.1f} / {kept[1]:6.1f} | {changed[0]:9.1f} /"
                f" {changed[1]:6.1f} | {kept[2] // 1024} KiB"
            )
        parts = app.ui.config["docklet.parts"]
        before = parts.renders
        for _ in range(100):  # a hundred open pages fetch their part after one event
            get("/ui/parts/apps?page=2")
        print(
            f"100 fetches of one part, nothing changed between them: {parts.renders - before}"
            " renders"
        )
        verdict = "meets" if worst <= TARGET_MS else "MISSES"
        print(f"slowest p95: {worst:.1f} ms; {verdict} the target of {TARGET_MS:g} ms")
        cp.store.close()


if __name__ == "__main__":
    main()
