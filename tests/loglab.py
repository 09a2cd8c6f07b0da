"""What the log relay's tests share: an app placed on nodes, and a scripted agent.

The scripted agent is a second real client of a served CP, not a mock: it
registers, opens its channel over real HTTP on loopback (upgraded, as today's
agent does, or the older chunked event stream), reads the frames the CP rings on
it, and writes batches up the channel (`send`) or POSTs them (`post`), as the
real agent does, but on the test's command. Its "containers" are what its heartbeat reports.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import yaml
from conftest import ADMIN_TOKEN

from docklet.cp.service.controlplane import ControlPlane
from docklet.wire.protocol import CHANNEL_UPGRADE, Heartbeat, Registration

AUTHOR = "tester <tester@example.com>"


class ScriptedAgent:
    """One node's agent, scripted: its channel, its heartbeats, its batches."""

    def __init__(self, cp: ControlPlane, url: str, name: str) -> None:
        self.cp, self.url, self.name = cp, url, name
        reply = cp.agents.register(
            Registration(engine_id=f"engine-{name}", name=name),
            join_token=cp.tokens.join_token(),
        )
        self.node_id, self.token = reply["node_id"], reply["token"]
        self.containers: list[dict[str, Any]] = []
        self.frames: queue.Queue[dict[str, Any] | str] = queue.Queue()  # str: a comment
        self.channel: http.client.HTTPResponse | None = None
        self._conn: http.client.HTTPConnection | None = None
        self.sock: socket.socket | None = None
        self._beating = threading.Event()
        self._beater: threading.Thread | None = None

    def keep_beating(self, every: float = 0.2) -> None:
        """Heartbeats in the background (in process: only liveness matters) until `stop`."""
        self._beating.set()

        def beat() -> None:
            while self._beating.is_set():
                self.beat_in_process()
                time.sleep(every)

        self._beater = threading.Thread(target=beat, daemon=True)
        self._beater.start()

    def stop(self) -> None:
        """No more heartbeats (none is under way when this returns), and no channel."""
        self._beating.clear()
        if self._beater is not None:
            self._beater.join(timeout=5)
        self.close_channel()

    # -- the channel ------------------------------------------------------------------

    def open_channel(self, timeout: float = 60.0, upgrade: bool = True) -> int:
        """GET its channel, asking for the upgrade unless told not to (an older agent); the
        status (101 or 200: its frames are read into `frames` from now on)."""
        parts = urlsplit(self.url)
        self._conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
        headers = {"Authorization": f"Bearer {self.token}"}
        if upgrade:
            headers |= {"Connection": "Upgrade", "Upgrade": CHANNEL_UPGRADE}
        self._conn.request("GET", f"/api/agents/{self.node_id}/channel", headers=headers)
        self.sock = self._conn.sock
        answer = self._conn.getresponse()
        if answer.status not in (101, 200):
            answer.read()
            return answer.status
        self.channel = answer
        read = self._read_lines if answer.status == 101 else self._read
        threading.Thread(target=read, args=(answer,), daemon=True).start()
        return answer.status

    def _read(self, answer: http.client.HTTPResponse) -> None:
        try:
            for raw in iter(answer.readline, b""):
                line = raw.decode().rstrip("\n")
                if line.startswith("data: "):
                    self.frames.put(json.loads(line[6:]))
                elif line.startswith(":"):
                    self.frames.put(line[1:].strip())
        except (OSError, ValueError, AttributeError, http.client.HTTPException):  # closed meanwhile
            pass
        self.frames.put("closed")

    def _read_lines(self, answer: http.client.HTTPResponse) -> None:
        """An upgraded channel: a JSON object a line (a keepalive is put as "keepalive")."""
        try:
            for raw in iter(answer.fp.readline, b""):
                frame = json.loads(raw)
                self.frames.put("keepalive" if frame.get("type") == "keepalive" else frame)
        except (OSError, ValueError, AttributeError):  # closed meanwhile
            pass
        self.frames.put("closed")

    def send(self, stream: str, lines: list[tuple[str, str]], **extra: Any) -> None:
        """Write a batch of (label, text) lines up the upgraded channel (no answer comes,
        unless the stream is closed: a `logs_stop` frame)."""
        batch = {"lines": [{"label": label, "text": text} for label, text in lines], **extra}
        self.write(json.dumps({"type": "batch", "stream": stream, **batch}).encode() + b"\n")

    def write(self, data: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(data)

    def close_channel(self) -> None:
        """Hang up (the response's file would keep the socket open past a plain close)."""
        if self._conn is not None:
            hang_up(self.sock)
            self._conn.close()

    def next_frame(self, timeout: float = 5.0, kind: str = "") -> dict[str, Any]:
        """The next data frame (of `type` `kind`, when given), skipping comments."""
        deadline = time.monotonic() + timeout
        while True:
            item = self.frames.get(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(item, dict) and (not kind or item.get("type") == kind):
                return item
            if item == "closed":
                raise AssertionError(f"{self.name}: its channel closed")

    # -- heartbeats and batches ---------------------------------------------------------

    def run(self, app: str, slot: int, revision: int, state: str = "running") -> str:
        """Report one more container of `app` (in its next heartbeat, sent now)."""
        name = f"docklet.{app}.{slot}.r{revision}"
        self.containers.append(
            {
                "id": f"{self.name}-{name}",
                "name": name,
                "image": "busybox",
                "state": state,
                "labels": {
                    "docklet.cluster": self.cp.cluster_id,
                    "docklet.app": app,
                    "docklet.slot": str(slot),
                    "docklet.revision": str(revision),
                    "docklet.spec-hash": f"hash{revision}",
                    "docklet.node": self.node_id,
                },
            }
        )
        self.heartbeat()
        return name

    def heartbeat(self) -> dict[str, Any]:
        """A heartbeat over real HTTP; the CP's answer."""
        return self.call("POST", "heartbeat", {"containers": self.containers})[1]

    def beat_in_process(self) -> None:
        self.cp.agents.heartbeat(
            self.node_id, Heartbeat.model_validate({"containers": self.containers})
        )

    def post(self, stream: str, lines: list[tuple[str, str]], **extra: Any) -> tuple[int, Any]:
        """POST a batch of (label, text) lines to the stream: (status, answer)."""
        batch = {"lines": [{"label": label, "text": text} for label, text in lines], **extra}
        return self.call("POST", f"logs/{stream}", batch)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}/api/agents/{self.node_id}/{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


def put_app(cp: ControlPlane, name: str, **fields: Any) -> None:
    """Commit apps/<name>.yaml with these fields (the CP syncs and reconciles at once)."""
    spec = {"name": name, "image": "busybox:1.36", **fields}
    text = yaml.safe_dump(spec).encode()
    cp.apps.commit(lambda files: {f"apps/{name}.yaml": text}, f"Put {name}", AUTHOR)


def placed(cp: ControlPlane, app: str) -> dict[int, str]:
    """The app's slots and their nodes."""
    rows = cp.store.query("SELECT slot, node_id FROM placements WHERE app = ?", (app,))
    return {r["slot"]: r["node_id"] for r in rows}


def deploy(cp: ControlPlane, agents: list[ScriptedAgent], app: str, replicas: int) -> dict:
    """The app placed on `agents`' nodes, each slot's container reported running by its node:
    {slot: agent}."""
    put_app(cp, app, replicas=replicas)
    revision = cp.store.one("SELECT MAX(number) AS n FROM revisions WHERE app = ?", (app,))["n"]
    by_node = {a.node_id: a for a in agents}
    out = {}
    for slot, node_id in sorted(placed(cp, app).items()):
        agent = by_node[node_id]
        agent.run(app, slot, revision)
        out[slot] = agent
    return out


class LogReader:
    """A caller of GET /api/apps/{app}/logs over real HTTP: its lines, notices and end."""

    def __init__(
        self, url: str, app: str, query: str = "", token: str = ADMIN_TOKEN, read: bool = True
    ) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        if not read:  # a caller that stalls: its socket takes in little until `start`
            self.conn.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
            self.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self.conn.request(
            "GET", f"/api/apps/{app}/logs?{query}", headers={"Authorization": f"Bearer {token}"}
        )
        self.sock = self.conn.sock
        self.answer = self.conn.getresponse()
        self.status = self.answer.status
        self.lines: list[dict[str, Any]] = []
        self.notices: list[str] = []
        self.end: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.failed: Exception | None = None
        self.changed = threading.Condition()
        if self.status != 200:
            self.error = json.loads(self.answer.read())["error"]
            self.retry_after = self.answer.getheader("Retry-After")
            return
        self.thread = threading.Thread(target=self._read, daemon=True)
        if read:
            self.thread.start()

    def start(self) -> None:
        """Read (again), from now on."""
        self.thread.start()

    def _read(self) -> None:
        event = ""
        try:
            for raw in iter(self.answer.readline, b""):
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    self._got(event, json.loads(line[6:]))
                    event = ""
        except (OSError, ValueError, AttributeError, http.client.HTTPException) as exc:
            self.failed = exc  # closed meanwhile, or the test's own doing
        with self.changed:
            self.end = self.end or {"reason": "(connection closed)"}
            self.changed.notify_all()

    def _got(self, event: str, data: dict[str, Any]) -> None:
        with self.changed:
            if event == "notice":
                self.notices.append(data["message"])
            elif event == "end":
                self.end = data
            else:
                self.lines.append(data)
            self.changed.notify_all()

    def wait(self, predicate: Any, timeout: float = 10.0, what: str = "lines") -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(
                    f"timed out waiting for {what}: {len(self.lines)} lines,"
                    f" notices {self.notices}, end {self.end}, failed {self.failed!r}"
                )

    def texts(self) -> list[tuple[str, str]]:
        return [(line["label"], line["text"]) for line in self.lines]

    def close(self) -> None:
        hang_up(self.sock)
        self.conn.close()


def hang_up(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
