"""Hostile HTTP against a real CP on loopback: wrong tokens, slow clients, a CP that cannot
hear, bodies over the limit.

Two simulated agents heartbeat over real HTTP from 127.0.0.1, as agents on the CP's
host do; the hostile traffic comes from the same address or from 127.0.0.2, for
longer than a node takes to go offline (3 s here). Throughout, no node may change
status and no task may be created.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import ADMIN_TOKEN, wait_for
from hostile import Repeat, SlowClients, call
from test_tasks import register_node

from docklet.cp.controller import Controller
from docklet.cp.server import Server, arrived_whole, raise_fd_limit
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.settings import CPConfig

ATTACK = 4.0  # seconds of hostile traffic: longer than offline_seconds (6 beats of 0.5 s)
MAX_BODY = 64 * 1024
MAX_GIT_BODY = 1024 * 1024


@pytest.fixture
def config(tmp_path: Path) -> CPConfig:
    return CPConfig(
        data_dir=tmp_path / "cp",
        host="127.0.0.1",
        port=0,
        threads=16,
        heartbeat_interval=0.5,
        reconcile_interval=0.2,
        read_timeout=1.5,
        max_body=MAX_BODY,
        max_git_body=MAX_GIT_BODY,
    )


class Served(NamedTuple):
    url: str
    server: Server
    cp: ControlPlane


@pytest.fixture
def served(cp: ControlPlane) -> Iterator[Served]:
    """The CP behind its real HTTP server on a loopback port, with its controller loop."""
    raise_fd_limit()  # a thousand slow connections, both of their ends in this process
    server = Server(cp)
    stop = threading.Event()
    controller = threading.Thread(target=Controller(cp).run, args=(stop,), daemon=True)
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    controller.start()
    yield Served(f"http://127.0.0.1:{server.port}", server, cp)
    stop.set()
    cp.changes.wake()
    controller.join(timeout=10)
    server.stop()


class Nodes(NamedTuple):
    beats: list[Repeat]
    tasks: list[Any]  # (id, node, kind, status) of every task once the cluster settled


@pytest.fixture
def nodes(served: Served) -> Iterator[Nodes]:
    """Nodes a and b, each with an agent heartbeating from 127.0.0.1 every 0.25 s, and an
    app with a replica on each (its deploy tasks wait: no agent takes them)."""
    cp = served.cp
    beats = []
    for name in ("a", "b"):
        node, token = register_node(cp, name)
        beat = Repeat(
            0.25,
            served.url,
            "POST",
            f"/api/agents/{node}/heartbeat",
            {"containers": [], "report_seq": 0},
            {"Authorization": f"Bearer {token}"},
        )
        beat.start()
        beats.append(beat)
    wait_for(lambda: list(_statuses(cp).values()) == ["online"] * 2, 10, "both nodes online")
    cp.apps.create({"name": "web", "image": "nginx:1.25", "replicas": 2}, "alice")
    wait_for(lambda: len(_tasks(cp)) == 2, 10, "the app's two deploy tasks")
    time.sleep(1)  # a few more passes: nothing else is to be done
    settled = _tasks(cp)
    try:
        yield Nodes(beats, settled)
    finally:
        for beat in beats:
            beat.stop()


def _statuses(cp: ControlPlane) -> dict[str, str]:
    return {n["node_id"]: n["status"] for n in cp.views.nodes()}


def _tasks(cp: ControlPlane) -> list[Any]:
    rows = cp.store.query("SELECT id, node_id, kind, status FROM tasks ORDER BY id")
    return [(r["id"], r["node_id"], r["kind"], r["status"]) for r in rows]


def _judged(
    cp: ControlPlane, seconds: float, also: Callable[[], None] = lambda: None
) -> tuple[set[str], list[Any]]:
    """Every node status the CP showed over `seconds` (sampled every 0.1 s, with `also`
    called each time), and its tasks."""
    seen: set[str] = set()
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        seen |= set(_statuses(cp).values())
        also()
        time.sleep(0.1)
    return seen, _tasks(cp)


def _beats_since(nodes: Nodes, started: float) -> list[tuple[float, int | str, float]]:
    return [a for beat in nodes.beats for a in beat.answers if a[0] >= started]


# -- 1. other people's wrong guesses lock out no valid credential ----------------------


def test_wrong_tokens_from_the_agents_address_lock_out_no_valid_credential(
    served: Served, nodes: Nodes
) -> None:
    """One wrong token every 0.1 s from 127.0.0.1 (the agents' address, as on the CP's
    host or behind NAT): past ten, its guesses get 429, but the agents' heartbeats and the
    admin's token are served all along."""
    guess = {"Authorization": "Bearer dku_" + uuid.uuid4().hex * 2}
    guesses = Repeat(0.1, served.url, "GET", "/api/state/apps", None, guess)
    admin = Repeat(0.3, served.url, "GET", "/api/state/apps", None, _admin())
    started = time.monotonic()
    guesses.start()
    admin.start()
    try:
        seen, tasks = _judged(served.cp, ATTACK)
    finally:
        guesses.stop()
        admin.stop()
    assert guesses.statuses()[401] == 10 and guesses.statuses()[429] >= 20, guesses.statuses()
    assert set(admin.statuses()) == {200}, admin.statuses()
    beats = _beats_since(nodes, started)
    assert len(beats) >= 20 and {status for _, status, _ in beats} == {200}, beats
    assert seen == {"online"} and tasks == nodes.tasks


# -- 2. slow clients hold a worker for a bounded time, and one address a bounded share -----


def test_a_slow_client_is_answered_408_after_the_read_timeout_in_total(served: Served) -> None:
    """A header line every 0.4 s: never 10 s between two reads, but the request as a whole
    must arrive within --read-timeout (1.5 s here)."""
    with _connect(served.url, "127.0.0.2") as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: docklet\r\n")
        started = time.monotonic()
        answer = b""
        while time.monotonic() - started < 6 and not answer:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
                sock.settimeout(0.4)
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
        took = time.monotonic() - started
    status, body = _parse(answer)
    assert status == 408 and 1.4 < took < 3.0, (answer, took)
    assert body["error"]["code"] == "request_timeout" and body["error"]["status"] == 408


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_that_does_not_arrive_in_time_is_answered_408(served: Served, chunked: bool) -> None:
    """Half a body, then nothing: the API answers 408 in its error shape once the read
    timeout is spent, not 500 (and not after 10 s of silence per read)."""
    framing = (
        b"Transfer-Encoding: chunked\r\n\r\n10\r\n" if chunked else (b"Content-Length: 100\r\n\r\n")
    )
    with _connect(served.url, "127.0.0.1") as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /api/apps HTTP/1.1\r\nHost: docklet\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n" + framing + b'{"image":'
        )
        status, body = _parse(_read_answer(sock))
    assert status == 408 and body["error"]["code"] == "request_timeout", body
    assert 1.4 < time.monotonic() - started < 4


def test_an_address_holds_at_most_its_share_of_threads_while_it_is_still_sending(
    served: Served,
) -> None:
    """16 threads: one address may hold 4 while its requests are still arriving. A fifth
    unfinished request waits for its bytes in the selector, without a thread, until its
    read timeout; a request that arrived whole is served at once."""
    slow = [_connect(served.url, "127.0.0.2") for _ in range(5)]
    try:
        for sock in slow[:4]:
            sock.sendall(b"GET /api/health HTTP/1.1\r\n")
        wait_for(lambda: served.server.reading("127.0.0.2") == 4, 5, "four slow requests")
        fifth = slow[4]
        fifth.sendall(b"GET /api/health HTTP/1.1\r\n")
        time.sleep(0.5)
        assert served.server.reading("127.0.0.2") == 4  # it holds no thread
        status, answer, took = call(served.url, "GET", "/api/health", source="127.0.0.2")
        assert (status, answer) == (200, {"status": "ok"}) and took < 0.5
        time.sleep(1.2)  # past --read-timeout since its first line
        fifth.sendall(b"X-More: 1\r\n")
        fifth.settimeout(2)
        status, body = _parse(_read_answer(fifth))
        assert status == 408 and body["error"]["code"] == "request_timeout", body
    finally:
        for sock in slow:
            sock.close()


def test_a_thousand_slow_connections_leave_heartbeats_and_health_answering(
    served: Served, nodes: Nodes
) -> None:
    """1,000 connections from 127.0.0.2, each sending a header line every 2 s: four hold a
    thread at most, the others wait in the selector, each answered 408 once its read
    timeout is spent (and back 2 s later); heartbeats and /api/health answer all along."""
    slow = SlowClients(served.url, 1000, source="127.0.0.2", every=2.0)
    health = Repeat(0.2, served.url, "GET", "/api/health", timeout=5)
    held: list[int] = []
    open_now: list[int] = []

    def sample() -> None:
        held.append(served.server.reading("127.0.0.2"))
        open_now.append(slow.open_now)

    started = time.monotonic()
    slow.start()
    health.start()
    try:
        wait_for(lambda: slow.opened >= 1000, 20, "a thousand slow connections")
        seen, tasks = _judged(served.cp, ATTACK, sample)
    finally:
        health.stop()
        slow.stop()
    assert set(health.statuses()) == {200}, health.statuses()
    assert max(health.seconds()) < 1.0, sorted(health.seconds())[-5:]
    beats = _beats_since(nodes, started)
    assert {status for _, status, _ in beats} == {200}, beats
    assert max(took for _, _, took in beats) < 1.0
    assert seen == {"online"} and tasks == nodes.tasks
    assert max(held) == 4 and max(open_now) >= 900, (max(held), max(open_now))
    assert slow.answers["408"] >= 900 and set(slow.answers) <= {"408", "reset"}, slow.answers


def test_a_request_has_arrived_whole_once_its_headers_and_announced_body_are_in() -> None:
    assert not arrived_whole(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert arrived_whole(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not arrived_whole(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc")
    assert arrived_whole(b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nabcde")
    chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert not arrived_whole(chunked)  # its end is not looked for
    assert arrived_whole(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n")  # a 400 at once


# -- 3. a CP that cannot hear does not judge ---------------------------------------------


def test_a_cp_whose_threads_are_all_taken_judges_no_node(served: Served, nodes: Nodes) -> None:
    """Every thread held by requests that do not end (a stuck handler, slow disks): the
    heartbeats wait in the queue, unheard, for longer than a node takes to go offline. No
    503 is given (--overload-wait is 30 s), yet the CP knows it is deaf."""
    server = served.server
    server.app.limit = 30.0
    release = threading.Event()
    api = server.app.app

    def stuck(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/stuck":
            release.wait(20)
        return api(environ, start_response)

    server.app.app = stuck
    holders = [Repeat(30, served.url, "GET", "/stuck", timeout=20) for _ in range(16)]
    for holder in holders:
        holder.start()
    try:
        wait_for(lambda: server.waited() > 0.5, 5, "heartbeats to queue for a thread")
        seen, tasks = _judged(served.cp, ATTACK)
    finally:
        release.set()
        for holder in holders:
            holder.stop()
    assert seen == {"online"} and tasks == nodes.tasks
    assert served.cp.views.metrics()["overloaded"] == 0  # deaf without a single 503


def test_a_refusal_to_a_nodes_address_makes_the_cp_deaf_and_to_another_does_not(
    cp: ControlPlane,
) -> None:
    liveness = cp.liveness
    liveness.started_at = before = time.time() - 100
    liveness.spoke_from("10.0.0.5")  # a node's credential passed from there
    liveness.refused("10.9.9.9")  # nobody's node: a stranger's 429 hides no heartbeat
    assert liveness.deaf_until() == before
    liveness.refused("10.0.0.5")
    assert liveness.deaf_until() > time.time() - 1


# -- 14. every answer has the JSON error shape, over-limit bodies included ----------------


def test_bodies_over_the_limits_get_the_json_413(served: Served) -> None:
    for length in (MAX_BODY + 1, MAX_GIT_BODY + 1):
        status, body = _raw(
            served.url,
            b"POST /api/apps HTTP/1.1\r\nHost: docklet\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % length,
        )
        assert status == 413 and body["error"]["code"] == "too_large", (length, body)
        assert body["error"]["status"] == 413 and str(MAX_BODY) in body["error"]["message"]


def test_a_chunked_body_is_read_up_to_the_api_limit(served: Served) -> None:
    def chunked(data: bytes) -> bytes:
        return (
            b"POST /api/apps HTTP/1.1\r\nHost: docklet\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in _pieces(data, 8192))
            + b"0\r\n\r\n"
        )

    status, body = _raw(served.url, chunked(b" " * MAX_BODY + b"{}"))
    assert status == 413 and body["error"]["code"] == "too_large", body
    status, body = _raw(served.url, chunked(json.dumps({"image": "nginx:1.25"}).encode()))
    assert status == 201 and body["app"] == "nginx", body


def test_what_the_server_itself_refuses_has_the_json_error_shape(served: Served) -> None:
    cases = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /api/health HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 413),
        (b"GET /api/health HTTP/3.0\r\n\r\n", 505),
        (b"GET /api/health HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"POST /api/apps HTTP/1.1\r\nContent-Length: -1\r\n\r\n{}", 400),
    ]
    for request, expected in cases:
        status, body = _raw(served.url, request)
        assert status == expected, (request[:40], status, body)
        assert set(body["error"]) == {"code", "message", "status"}, body
        assert body["error"]["status"] == expected and body["error"]["message"]


# -- helpers -----------------------------------------------------------------------------


def _admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _connect(url: str, source: str) -> socket.socket:
    port = int(url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def _raw(url: str, request: bytes) -> tuple[int, Any]:
    """Send `request` as bytes; the status and the JSON body of the answer."""
    with _connect(url, "127.0.0.1") as sock:
        sock.sendall(request)
        return _parse(_read_answer(sock))


def _read_answer(sock: socket.socket) -> bytes:
    answer = b""
    while b"\r\n\r\n" not in answer or not _complete(answer):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def _parse(answer: bytes) -> tuple[int, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    headers = dict(
        line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line
    )
    assert headers.get("content-type") == "application/json", answer[:300]
    return status, json.loads(body)


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]
