"""A control plane restarted under a thousand nodes: its first pass, its passes, its views.

Builds the state in this process, through the CP's own code (a real SQLite
file and a real Git repository in a temporary directory, no HTTP): N nodes
register, one commit creates N apps of C replicas each, the CP schedules
them, and every node's "agent" leases its tasks, reports each one done with
its container, and sends a heartbeat listing them, as docklet-agent does.

Then the CP stops (its database closed) for --down seconds, longer than the
offline threshold (the restarted CP's heartbeat interval is 1 s, so a node
is offline after 6 s of silence), and a new ControlPlane starts on the same data. It
prints how long the first reconcile pass took (a full one: target under a
second), how many nodes it declared unknown or offline (target 0: the CP
was down, not the nodes), the longest write transaction, and the cost of
what the CP does all day at that size: a pass with nothing changed, a pass
after one app changed, `docklet ps` (GET /api/state/apps?brief=true, and the full list `ps --json`
reads), an unchanged heartbeat and a changed one.

Usage: python benchmarks/restart.py [--nodes 1000] [--containers 10] [--down 8]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from docklet.cp.controller import Controller
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.service.views import app_views
from docklet.cp.settings import CPConfig
from docklet.wire.protocol import Heartbeat, Label, Registration, TaskReport

AUTHOR = "bench <bench@localhost>"


def timed(call: Any, runs: int = 5) -> tuple[float, Any]:
    """The median time of `runs` calls in ms, and the last call's answer."""
    times, answer = [], None
    for _ in range(runs):
        start = time.perf_counter()
        answer = call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), answer


def container(task: dict[str, Any], node_id: str, cluster_id: str) -> dict[str, Any]:
    """The container a docklet-agent would report after running this deploy task."""
    labels = {
        Label.CLUSTER: cluster_id,
        Label.APP: task["app"],
        Label.SLOT: str(task["slot"]),
        Label.REVISION: str(task["revision"]),
        Label.TASK: str(task["id"]),
        Label.NODE: node_id,
        Label.SPEC_HASH: task["payload"]["container_hash"],
    }
    return {
        "id": f"{task['id']:064d}",
        "name": task["container"],
        "image": task["payload"]["image"],
        "state": "running",
        "labels": {str(k): v for k, v in labels.items()},
        "started_at": time.time() - 3600,
    }


def build(cp: ControlPlane, n_nodes: int, replicas: int) -> dict[str, tuple[str, list]]:
    """N nodes running N apps of `replicas` each; returns each node's token and containers."""
    join = cp.tokens.join_token()
    agents = {}
    for i in range(n_nodes):
        reply = cp.agents.register(
            Registration(engine_id=f"engine-{i}", name=f"n{i}"), join_token=join
        )
        agents[reply["node_id"]] = (reply["token"], [])
    image = "registry.bench:5000/app:1"
    specs = {
        f"apps/app{i}.yaml": f"name: app{i}\nimage: {image}\nreplicas: {replicas}\n"
        for i in range(n_nodes)
    }
    cp.apps.commit(lambda files: {k: v.encode() for k, v in specs.items()}, "apps", AUTHOR)
    seq = 0
    for node_id, (token, containers) in agents.items():
        for task in cp.agents.lease_tasks(node_id, token, 0, limit=1000):
            seq += 1
            c = container(task, node_id, cp.cluster_id)
            report = {"status": "done", "lease_token": task["lease_token"], "seq": seq}
            cp.agents.report(
                node_id, task["id"], TaskReport(**report, container=c, container_id=c["id"])
            )
            containers.append(c)
        cp.agents.heartbeat(node_id, Heartbeat(containers=containers, report_seq=seq))
    return agents


def beat_all(cp: ControlPlane, agents: dict[str, tuple[str, list]]) -> None:
    for node_id, (_token, containers) in agents.items():
        cp.agents.heartbeat(node_id, Heartbeat(containers=containers, report_seq=10**9))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--containers", type=int, default=10, help="per node (replicas per app)")
    parser.add_argument("--down", type=float, default=8, help="seconds the CP is down")
    parser.add_argument("--profile", action="store_true", help="print where a pass and ps spend")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # Building takes a while: no node may go quiet meanwhile (heartbeats every 30 s).
        building = CPConfig(data_dir=Path(tmp), heartbeat_interval=30.0, log_level="WARNING")
        config = CPConfig(data_dir=Path(tmp), heartbeat_interval=1.0, log_level="WARNING")
        cp = ControlPlane(building)
        start = time.perf_counter()
        agents = build(cp, args.nodes, args.containers)
        beat_all(cp, agents)
        cp.liveness.flush_seen()
        apps = cp.views.apps()
        running = sum(a["running"] for a in apps)
        print(
            f"{args.nodes} nodes, {len(apps)} apps, {running} containers running"
            f" (built in {time.perf_counter() - start:.0f}s); CP down for {args.down:g}s"
            f" (offline after {config.offline_seconds:g}s of silence)"
        )
        cp.store.close()
        time.sleep(args.down)

        cp = ControlPlane(config)  # the restart: same data dir
        controller = Controller(cp)
        gc.freeze()  # as docklet-cp does once started (and this process's agents with it)
        first_ms, queued = timed(cp.passes.reconcile, runs=1)
        statuses = [n["status"] for n in cp.views.nodes()]
        lost = sum(1 for s in statuses if s != "online")
        beat_all(cp, agents)  # the agents' next heartbeats
        cp.config = building  # the day-to-day costs below: no node goes quiet meanwhile
        idle_ms, _ = timed(lambda: controller.pass_once())
        controller._next_full_pass = float("inf")  # the usual pass: only what changed
        idle_ms, _ = timed(lambda: controller.pass_once())

        def one_app_changed() -> None:
            cp.changes.wake(["app1"])
            controller.pass_once()

        changed_ms, _ = timed(one_app_changed)
        full_ms, _ = timed(lambda: cp.passes.reconcile(), runs=3)

        def rebuilt(brief: bool) -> str:
            return json.dumps(app_views(cp.store, building, None, brief=brief))

        full_ps_ms, views = timed(lambda: rebuilt(False))
        ps_ms, brief = timed(lambda: rebuilt(True))
        cp.views.apps(brief=True)
        kept_ps_ms, _ = timed(lambda: json.dumps(cp.views.apps(brief=True)))
        counter = iter(range(10**6))
        create_ms, _ = timed(
            lambda: cp.apps.create({"name": f"new{next(counter)}", "image": "x:1"}, AUTHOR)
        )
        node_id, (_token, containers) = next(iter(agents.items()))
        same_ms, _ = timed(
            lambda: cp.agents.heartbeat(
                node_id, Heartbeat(containers=containers, report_seq=10**9)
            ),
            runs=50,
        )
        flipped = [dict(c) for c in containers]

        def changed_beat() -> None:
            flipped[0]["restarts"] = flipped[0].get("restarts", 0) + 1
            cp.agents.heartbeat(node_id, Heartbeat(containers=flipped, report_seq=10**9))

        changed_beat_ms, _ = timed(changed_beat, runs=20)
        rows = [
            ("first pass after the restart (full)", f"{first_ms:.0f} ms", "< 1000 ms"),
            ("nodes not online after it", f"{lost} of {len(statuses)}", "0"),
            ("tasks it queued", str(queued), "0"),
            ("pass, nothing changed", f"{idle_ms:.1f} ms", ""),
            ("pass, one app changed", f"{changed_ms:.1f} ms", ""),
            ("full pass (every 30 s)", f"{full_ms:.0f} ms", ""),
            ("longest write transaction", f"{cp.store.longest_write * 1000:.1f} ms", "< 20 ms"),
            ("docklet ps, list built", f"{ps_ms:.0f} ms ({len(brief) // 1024} KiB)", ""),
            ("docklet ps, list kept", f"{kept_ps_ms:.0f} ms", ""),
            ("ps --json, list built", f"{full_ps_ms:.0f} ms ({len(views) // 1024} KiB)", ""),
            ("create an app (commit, sync, pass, answer)", f"{create_ms:.0f} ms", ""),
            ("heartbeat, unchanged", f"{same_ms:.2f} ms", ""),
            ("heartbeat, one container changed", f"{changed_beat_ms:.2f} ms", ""),
        ]
        width = max(len(r[0]) for r in rows)
        for what, value, target in rows:
            print(f"{what:<{width}} | {value:>20} | {target}")
        slow = sorted(cp.store.slow_writes, key=lambda w: -w[1])[:5]
        listed = ", ".join(f"{where} {took * 1000:.0f} ms" for _, took, where in slow)
        print("writes over 20 ms:", listed or "none")
        if args.profile:
            import cProfile
            import pstats

            cProfile.runctx("cp.passes.reconcile()", globals(), locals(), "/tmp/pass.prof")
            cProfile.runctx(
                "json.dumps(app_views(cp.store, building, None, brief=True))",
                globals(),
                locals(),
                "/tmp/ps.prof",
            )
            cProfile.runctx(
                "cp.apps.create({'name': 'profiled', 'image': 'x:1'}, AUTHOR)",
                globals(),
                locals(),
                "/tmp/create.prof",
            )
            for f in ("/tmp/pass.prof", "/tmp/ps.prof", "/tmp/create.prof"):
                pstats.Stats(f).sort_stats("tottime").print_stats(15)
        cp.store.close()


if __name__ == "__main__":
    main()
