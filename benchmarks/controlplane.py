"""A throw-away control plane (and agent) process for the benchmarks.

The control plane is fresh, so its bootstrap window is open: the helper takes
the first admin token and the join token, and puts them in this process's
environment (DOCKLET_TOKEN, DOCKLET_JOIN_TOKEN), where the `docklet` and
`docklet-agent` processes a benchmark starts find them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from docklet.wire.client import Client

BIN = Path(sys.executable).parent


@contextmanager
def control_plane(
    data_dir: str, *args: str, log: IO[bytes] | None = None
) -> Iterator[tuple[str, int]]:
    """Run `docklet-cp` on a free loopback port until the block ends; yields (URL, pid)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cp = subprocess.Popen(
        [
            str(BIN / "docklet-cp"),
            "--data-dir",
            data_dir,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *args,
        ],
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/health", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{url} did not answer") from None
                time.sleep(0.1)
        token = Client(url).post("/api/auth/bootstrap", {"name": "benchmark"})["token"]
        os.environ["DOCKLET_TOKEN"] = token
        join = Client(url, token=token).post("/api/nodes/join-token", {})["token"]
        os.environ["DOCKLET_JOIN_TOKEN"] = join
        yield url, cp.pid
    finally:
        cp.terminate()
        cp.wait()


def admin(url: str) -> Client:
    """A client of `url` with the admin token `control_plane` took."""
    return Client(url, token=os.environ["DOCKLET_TOKEN"])


def start_agent(url: str, log: IO[bytes] | None, **env: str) -> subprocess.Popen[bytes]:
    """Start `docklet-agent` for `url` as node bench-node; the caller terminates it."""
    return subprocess.Popen(
        [str(BIN / "docklet-agent")],
        stdout=log,
        stderr=log,
        env={**os.environ, "DOCKLET_CP": url, "DOCKLET_NODE_NAME": "bench-node", **env},
    )


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
