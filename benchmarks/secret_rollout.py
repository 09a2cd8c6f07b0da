"""What secrets cost, in process: `secret set` to new revisions, and opening values for a lease.

A control plane on a temporary data dir with N apps, each using one shared secret (env
and file) and a secret of its own, committed in one commit. Then, median over runs:
`Secrets.set` of the shared secret (a sync of the head that records N new revisions, and
a pass over those apps, before it answers), `set` of one app's own secret (one revision),
`set` of a secret no app uses, and `Secrets.values` for one lease (opening two values:
what each deploy task's lease answer adds).

Usage: python benchmarks/secret_rollout.py [--apps 10,100,500] [--runs 5]
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


def spec(n: int) -> bytes:
    return (
        f"name: app-{n}\nimage: nginx:1.25\nenv:\n  DB: {{secret: shared}}\n"
        f"  OWN: {{secret: own-{n}}}\nsecrets:\n  - name: shared\n"
    ).encode()


def timed(work: Callable[[], Any], runs: int) -> float:
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        took.append(time.perf_counter() - started)
    return statistics.median(took)


def measure(apps: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cp = ControlPlane(CPConfig(data_dir=Path(tmp)))
        cp.secrets.set("shared", "shared-value-0", "bench")
        for n in range(apps):
            cp.secrets.set(f"own-{n}", f"own-value-{n}", "bench")
        files = {f"apps/app-{n}.yaml": spec(n) for n in range(apps)}
        cp.apps.commit(lambda _: files, "Add apps", "bench <bench@localhost>")
        revisions = cp.store.one("SELECT COUNT(*) AS n FROM revisions")
        assert revisions and revisions["n"] == apps, revisions
        counter = iter(range(1, 10**6))
        shared = timed(lambda: cp.secrets.set("shared", f"v{next(counter)}", "bench"), runs)
        own = timed(lambda: cp.secrets.set("own-0", f"v{next(counter)}", "bench"), runs)
        unused = timed(lambda: cp.secrets.set("unused", f"v{next(counter)}", "bench"), runs)
        made = cp.store.one("SELECT COUNT(*) AS n FROM revisions")
        lease = timed(lambda: cp.secrets.values([("shared", 1), ("own-0", 1)]), runs * 20)
        print(
            f"{apps:5d} apps: set shared {shared * 1000:7.1f} ms ({apps} revisions each)"
            f"  set own {own * 1000:6.1f} ms  set unused {unused * 1000:6.1f} ms"
            f"  open 2 values {lease * 1e6:6.0f} µs  (revisions made: {made and made['n']})"
        )
        cp.store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", default="10,100,500")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for apps in (int(a) for a in args.apps.split(",")):
        measure(apps, args.runs)


if __name__ == "__main__":
    main()
