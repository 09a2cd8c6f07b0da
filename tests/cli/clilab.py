"""What the CLI's tests share: invoking `docklet`, a real CP's nodes, and fake CPs on loopback.

Imported as `clilab` by the tests beside it, as tests/dockerlab.py is by the Docker tests.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from docklet.cli.main import cli
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.store.nodes import register
from docklet.wire.protocol import Registration

ROOT = Path(__file__).resolve().parents[2]  # this checkout, whichever venv runs the tests


def invoke(url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--cp", url, *args])
    return result.exit_code, result.stdout, result.stderr


@contextlib.contextmanager
def fake_cp(status: int, body: bytes) -> Iterator[str]:
    """A misbehaving server on loopback: every request gets `status` and `body`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


Script = dict[tuple[str, str], list[tuple[int, Any]]]


@contextlib.contextmanager
def scripted_cp(script: Script) -> Iterator[tuple[str, list[tuple[str, str, Any]]]]:
    """A fake CP on loopback: each (method, path) gives its (status, JSON) answers in
    turn, the last one for ever; any other request is a 404. Yields the URL and the
    requests received, as (method, path, JSON body or None)."""
    received: list[tuple[str, str, Any]] = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                received.append((self.command, self.path, json.loads(raw) if raw else None))
                answers = script.get((self.command, self.path))
                if answers:
                    status, value = answers.pop(0) if len(answers) > 1 else answers[0]
                else:
                    status, value = 404, {"error": {"code": "not_found", "message": "no"}}
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(value).encode())

        do_GET = do_POST = do_DELETE = answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", received
    finally:
        server.shutdown()
        server.server_close()


TERMINAL = ("stable", "rolled_back", "rollback_failed", "superseded", "failed")


def rollout(status: str, **fields: Any) -> dict[str, Any]:
    """Rollout 7 of nginx, v2 → v3 over 3 replicas, as the API gives it."""
    now = time.time()
    return {
        "id": 7,
        "app": "nginx",
        "revision": "v3",
        "from_revision": "v2",
        "status": status,
        "terminal": status in TERMINAL,
        "canary_node": "node-1",
        "canary_slot": 1,
        "done": 0,
        "total": 3,
        "deadline": None,
        "progress_deadline": now + 300,
        "reason": None,
        "failed_phase": None,
        "evidence": {"error": None, "exit_code": None, "health": None, "logs": None},
        "created_at": now - 5,
        "updated_at": now,
        "finished_at": now if status in TERMINAL else None,
        **fields,
    }


def app_view(**fields: Any) -> dict[str, Any]:
    """The answer to update, rollback and retry: the app view, commit and rollout."""
    return {
        "name": "nginx",
        "revision": "v3",
        "running_revision": "v2",
        "status": "rolling_update",
        "desired": "running",
        "actual": "running",
        "replicas": 3,
        "running": 3,
        "nodes": ["node-1"],
        "errors": [],
        "last_error": None,
        "held": None,
        "commit": "0123456789abcdef",
        "rollout": rollout("canary"),
        **fields,
    }


ROLLOUT_PATH = "/api/apps/nginx/rollouts/7"


def update_script(*states: dict[str, Any], **answer: Any) -> Script:
    return {
        ("POST", "/api/apps/nginx/update"): [(200, app_view(**answer))],
        ("GET", ROLLOUT_PATH): [(200, state) for state in states],
    }


def docklet_process(*args: str | bytes) -> subprocess.CompletedProcess[str]:
    """`python -m docklet` from this checkout, through main() as the installed command."""
    return subprocess.run(
        [sys.executable, "-m", "docklet", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )


def add_node(cp: ControlPlane, name: str = "node-1") -> None:
    with cp.store.write() as db:
        register(db, Registration(engine_id=f"engine-{name}", name=name))
