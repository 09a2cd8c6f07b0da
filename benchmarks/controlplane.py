"""A throw-away control plane process for the benchmarks."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

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
        yield url, cp.pid
    finally:
        cp.terminate()
        cp.wait()


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
