"""How long a plan takes (`POST /api/plan`, what `docklet diff` waits for), in process.

A control plane on a temporary data dir with N apps of 3 replicas each, committed in one
commit and placed on 20 nodes. Then, each timed over several runs (median): a whole working
tree with nothing changed, the same with one app's image changed (one dry run of `decide`),
the same with every app's image changed (N dry runs), and one file alone. The first plan
of a tree parses every file; later ones hit sync's parse cache for unchanged blobs, as a
CI run after a sync does.

Usage: python benchmarks/plan_api.py [--apps 100,1000,2000] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.settings import CPConfig
from docklet.cp.store.nodes import register
from docklet.wire.protocol import Registration


def spec(n: int, image: str = "nginx:1.25") -> str:
    return f"name: app-{n}\nimage: {image}\nreplicas: 3\nenv:\n  SLOT: '{n}'\n"


def timed(work: Callable[[], Any], runs: int) -> float:
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        took.append(time.perf_counter() - started)
    return statistics.median(took)


def bench(apps: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cp = ControlPlane(CPConfig(data_dir=Path(tmp) / "cp"))
        with cp.store.write() as db:
            for n in range(20):
                register(db, Registration(engine_id=f"engine-{n}", name=f"node-{n}"))
        tree = {f"apps/app-{n}.yaml": spec(n) for n in range(apps)}
        data = {p: t.encode() for p, t in tree.items()}
        cp.apps.commit(lambda files: dict(data), f"{apps} apps", "bench <b@b>")
        one = {**tree, "apps/app-0.yaml": spec(0, "nginx:1.26")}
        every = {f"apps/app-{n}.yaml": spec(n, "nginx:1.26") for n in range(apps)}
        first = timed(lambda: cp.planning.plan(tree, True), 1)
        same = timed(lambda: cp.planning.plan(tree, True), runs)
        changed = timed(lambda: cp.planning.plan(one, True), runs)
        all_changed = timed(lambda: cp.planning.plan(every, True), max(1, runs // 2))
        single = timed(lambda: cp.planning.plan({"apps/app-0.yaml": spec(0, "x:2")}, False), runs)
        cp.store.close()
    print(
        f"{apps:>5} apps: first plan of the tree {first * 1000:7.0f} ms | unchanged"
        f" {same * 1000:6.0f} ms | one changed {changed * 1000:6.0f} ms | all changed"
        f" {all_changed * 1000:7.0f} ms | one file {single * 1000:5.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", default="100,1000,2000")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for n in (int(x) for x in args.apps.split(",")):
        bench(n, args.runs)


if __name__ == "__main__":
    main()
