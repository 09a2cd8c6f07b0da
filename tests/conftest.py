"""Shared fixtures: a real control plane (in-process or as processes), real Docker.

Docker-backed fixtures label everything they create with this run's id and
remove it afterwards, and never touch anything else on the engine.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dockerlab
import pytest

from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.settings import CPConfig
from docklet.wire.client import Client

RUN_ID = uuid.uuid4().hex[:8]
BIN = Path(sys.executable).parent
# The admin token the in-process CP fixture is seeded with (the CLI reads DOCKLET_TOKEN).
ADMIN_TOKEN = f"dku_test-admin-{RUN_ID}-{uuid.uuid4().hex}"

# Credentials and agent state of this run stay in a scratch directory, never the
# user's keyring or home: subprocesses inherit these too.
_SCRATCH = Path(tempfile.mkdtemp(prefix="docklet-test-"))
os.environ["XDG_CONFIG_HOME"] = str(_SCRATCH / "config")
os.environ["XDG_STATE_HOME"] = str(_SCRATCH / "state")
os.environ["DOCKLET_STATE_DIR"] = str(_SCRATCH / "state" / "docklet-agent")  # even in a container
os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
os.environ.pop("DOCKLET_TOKEN", None)


def silence(cp: Any, node_id: str, at: float) -> None:
    """The node's latest heartbeat was at `at`: as stored, and with no newer one in memory."""
    liveness = cp.liveness
    with liveness._seen_lock:
        liveness._seen.pop(node_id, None)
        liveness._seen_dirty.pop(node_id, None)
    with cp.store.write() as db:
        db.execute("UPDATE nodes SET last_seen = ? WHERE node_id = ?", (at, node_id))


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll until `predicate` returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- an in-process control plane -------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> CPConfig:
    return CPConfig(data_dir=tmp_path / "cp", heartbeat_interval=0.5, reconcile_interval=0.2)


@pytest.fixture
def cp(config: CPConfig, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    from docklet.common.status import TokenScope
    from docklet.cp.store import tokens

    plane = ControlPlane(config)
    with plane.store.write() as db:
        tokens.create(db, "test-admin", TokenScope.ADMIN, "conftest", secret=ADMIN_TOKEN)
    monkeypatch.setenv("DOCKLET_TOKEN", ADMIN_TOKEN)
    yield plane
    plane.store.close()


class WSGIClient:
    """Calls the Bottle app directly through WSGI: no sockets, real request handling.

    Sends the admin token unless a request names its own Authorization (or None).
    """

    def __init__(self, app: Any, token: str | None = ADMIN_TOKEN, join_token: str = "") -> None:
        self.app = app
        self.token = token
        self.join_token = join_token

    def request(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        environ: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = (
            raw
            if raw is not None
            else (json.dumps(json_body).encode() if json_body is not None else b"")
        )
        path, _, query = path.partition("?")
        extra_environ, environ = (
            environ,
            {
                "REQUEST_METHOD": method,
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "SERVER_NAME": "test",
                "SERVER_PORT": "80",
                "wsgi.url_scheme": "http",
                "wsgi.input": io.BytesIO(data),
                "CONTENT_LENGTH": str(len(data)),
                "CONTENT_TYPE": "application/json",
                "wsgi.errors": sys.stderr,
                "wsgi.version": (1, 0),
                "wsgi.multithread": True,
                "wsgi.multiprocess": False,
                "wsgi.run_once": False,
            },
        )
        environ.update(extra_environ or {})
        headers = dict(headers or {})
        if self.token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.join_token and "X-Docklet-Join-Token" not in headers:
            headers["X-Docklet-Join-Token"] = self.join_token
        for name, value in headers.items():
            if value is not None:
                environ["HTTP_" + name.upper().replace("-", "_")] = value
        status: list[str] = []

        def start_response(s: str, h: list[tuple[str, str]], *a: Any) -> None:
            status.append(s)
            self.last_headers = dict(h)

        chunks = self.app(environ, start_response)
        body = b"".join(chunks)
        text = body.decode()
        # GET /metrics; an agent's channel (which ends at once here: no server to detach it)
        if self.last_headers.get("Content-Type", "").startswith(("text/plain", "text/event-")):
            return int(status[0].split()[0]), text
        return int(status[0].split()[0]), json.loads(text) if text else None

    def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return self.request("GET", path, **kw)

    def post(self, path: str, json_body: Any = None, **kw: Any) -> tuple[int, Any]:
        return self.request("POST", path, json_body, **kw)

    def delete(self, path: str, **kw: Any) -> tuple[int, Any]:
        return self.request("DELETE", path, **kw)


@pytest.fixture
def api(cp: ControlPlane) -> WSGIClient:
    from docklet.cp.http.api import make_app

    return WSGIClient(make_app(cp), join_token=cp.tokens.join_token())


@pytest.fixture
def served_cp(cp: ControlPlane) -> Iterator[str]:
    """The in-process CP behind a real HTTP server on loopback, with its controller loop."""
    from docklet.cp.controller import Controller
    from docklet.cp.server import Server

    cp.config = CPConfig(**{**dict(cp.config), "host": "127.0.0.1", "port": 0, "threads": 16})
    server = Server(cp)
    stop = threading.Event()
    threads = [
        threading.Thread(target=server.run, daemon=True),
        threading.Thread(target=Controller(cp).run, args=(stop,), daemon=True),
    ]
    for t in threads:
        t.start()
    yield f"http://127.0.0.1:{server.port}"
    stop.set()
    cp.changes.wake()
    threads[1].join(timeout=10)
    server.stop()


# -- real Docker --------------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_client() -> Any:
    try:
        client = dockerlab.docker_client()
        client.ping()
    except Exception as exc:  # any failure means: no engine here
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a Docker engine: {exc}")
        pytest.skip(f"no Docker engine: {exc}")
    return client


@pytest.fixture(scope="session")
def web_image(docker_client: Any) -> Iterator[str]:
    """A tiny HTTP server image built offline (busybox), removed after the session."""
    tag = f"docklet-test/web:{RUN_ID}"
    image_id = dockerlab.build_web_image(docker_client, tag, {"docklet.test-run": RUN_ID})
    yield tag
    dockerlab.remove_image(docker_client, tag)
    # By id too: a late pull by digest (an agent still retrying after a test's own
    # cleanup) leaves a `repo:<none>` reference to this session's image.
    dockerlab.remove_image(docker_client, image_id)


@pytest.fixture(scope="session")
def web_image_v2(docker_client: Any) -> Iterator[str]:
    """A second, different build of the web image: what an update moves to."""
    tag = f"docklet-test/web:v2-{RUN_ID}"
    image_id = dockerlab.build_web_image(docker_client, tag, {"docklet.test-run": RUN_ID})
    yield tag
    dockerlab.remove_image(docker_client, tag)
    # By id too: a late pull by digest (an agent still retrying after a test's own
    # cleanup) leaves a `repo:<none>` reference to this session's image.
    dockerlab.remove_image(docker_client, image_id)


@pytest.fixture(scope="session")
def registry() -> str:
    if not dockerlab.registry_available():
        if os.environ.get("CI"):
            pytest.fail("CI needs the registry on 127.0.0.1:5000 (.ci/start-registry.sh)")
        pytest.skip("no registry on 127.0.0.1:5000 (run .ci/start-registry.sh)")
    return dockerlab.REGISTRY


class Process:
    """A Docklet process started the way a user would, logging to a file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args, self.log, self.env = args, log, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(self.env or {})}
        )
        out.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    """A real CP process and a real agent process on the real Docker engine."""

    def __init__(self, tmp: Path, docker: Any, *, heal_delay: float = 60.0) -> None:
        self.tmp, self.docker = tmp, docker
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = Client(self.url)
        self.cp = Process(
            [
                str(BIN / "docklet-cp"),
                "--data-dir",
                str(tmp / "cp"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--heartbeat-interval",
                "0.5",
                "--reconcile-interval",
                "0.5",
                "--heal-delay",
                str(heal_delay),
            ],
            tmp / "cp.log",
        )
        self.agent = Process(
            [str(BIN / "docklet-agent")],
            tmp / "agent.log",
            env={"DOCKLET_CP": self.url, "DOCKLET_NODE_NAME": "node-1"},
        )
        self.cluster_id = ""

    def start_cp(self) -> None:
        self.cp.start()
        wait_for(self._healthy, 20, "the control plane to answer /api/health")
        self.cluster_id = self.client.get("/api/version")["cluster_id"]

    def login(self) -> None:
        """The fresh cluster's bootstrap login, as the first `docklet` command makes it: after
        the first agent joined (the seed's order), since a claimed cluster needs the join token."""
        if not self.client.token:
            self.client.token = self.client.post("/api/auth/bootstrap", {"name": "test"})["token"]

    def join_token(self) -> str:
        return self.client.post("/api/nodes/join-token", {})["token"]

    def _healthy(self) -> bool:
        assert self.cp.alive, f"the CP exited:\n{self.cp.log.read_text()[-3000:]}"
        try:
            return self.client.get("/api/health") == {"status": "ok"}
        except Exception:  # not up yet
            return False

    def start_agent(self) -> None:
        self.agent.start()
        wait_for(lambda: self.node_online("node-1"), 20, "node-1 to come online")

    def node_online(self, node_id: str) -> bool:
        assert self.agent.alive, f"the agent exited:\n{self.agent.log.read_text()[-3000:]}"
        nodes = {n["node_id"]: n for n in self.client.get("/api/state/nodes")}
        return node_id in nodes and nodes[node_id]["status"] == "online"

    def docklet(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "docklet"), "--cp", self.url, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "DOCKLET_TOKEN": self.client.token or ""},
        )

    def app(self, name: str) -> dict[str, Any] | None:
        apps = {a["name"]: a for a in self.client.get("/api/state/apps")}
        return apps.get(name)

    def containers(self, app: str | None = None, all: bool = True) -> list[Any]:
        labels = [f"docklet.cluster={self.cluster_id}"]
        if app:
            labels.append(f"docklet.app={app}")
        # The SDK inspects each listed container: one removed in between is simply gone.
        return self.docker.containers.list(ignore_removed=True, all=all, filters={"label": labels})

    def close(self) -> None:
        self.agent.stop()
        self.cp.stop()
        if self.cluster_id:
            for c in self.containers():
                c.remove(force=True)


@pytest.fixture
def cluster(tmp_path: Path, docker_client: Any, web_image: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path, docker_client)
    try:
        c.start_cp()
        c.start_agent()
        c.login()
        yield c
    finally:
        c.close()
