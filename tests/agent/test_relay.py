"""The agent's half of the log relay, on the real Docker engine.

A tiny real HTTP server plays the CP's two endpoints (the batches an agent
posts, and the channel it holds open: upgraded, carrying batches up, or an
older CP's event stream); the followers read real containers.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import RUN_ID, wait_for

from docklet.agent.channel import Channel, Poster
from docklet.agent.engine import Engine
from docklet.agent.relay import Limits, Relay
from docklet.wire.client import Client
from docklet.wire.protocol import (
    CHANNEL_UPGRADE,
    LogBatch,
    LogContainer,
    LogEnd,
    LogRequest,
    LogStop,
)

pytestmark = pytest.mark.docker

# Lines on stdout and stderr, ten a second.
PRINTER = "i=0; while true; do echo line $i; echo err $i >&2; i=$((i+1)); sleep 0.1; done"
FLOOD = "i=0; while true; do echo flood $i; i=$((i+1)); done"
POST_PATH = re.compile(r"^/api/agents/([^/]+)/logs/([^/]+)$")


class FakeCP:
    """The CP's side, served for real on loopback: records batches, answers as told."""

    def __init__(self) -> None:
        self.batches: dict[str, list[dict[str, Any]]] = {}
        self.gone: set[str] = set()  # streams answered 410
        self.stall = threading.Event()  # while set, batch posts wait (a CP that stalls)
        self.frames: list[str] = []  # what the next channel request is told
        self.channels = 0
        self.refuse: tuple[int, dict[str, Any]] | None = None  # the channel's answer, if not 200
        self.upgrade = False  # answer an agent's Upgrade with 101 (else: an older CP's 200)
        self.end_channel = threading.Event()  # set: an upgraded channel is closed
        self.posted = 0  # batches that came by POST
        self.written = 0  # ... and up an upgraded channel
        self.lock = threading.Lock()
        cp = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                match = POST_PATH.match(self.path)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert match, self.path
                LogBatch.model_validate(body)  # what the agent sends is what the CP accepts
                while cp.stall.is_set():
                    time.sleep(0.05)
                stream = match[2]
                with cp.lock:
                    cp.batches.setdefault(stream, []).append(body)
                    cp.posted += 1
                if stream in cp.gone:
                    self._answer(410, {"error": {"code": "stream_closed", "message": "closed"}})
                else:
                    self._answer(200, {"open": True})

            def do_GET(self) -> None:
                with cp.lock:
                    cp.channels += 1
                    frames, cp.frames = cp.frames, []
                if cp.refuse is not None:
                    self._answer(*cp.refuse)
                    return
                if cp.upgrade and self.headers.get("Upgrade") == CHANNEL_UPGRADE:
                    self._upgraded(frames)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for frame in [": channel open\n\n", *frames]:
                    data = frame.encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                    time.sleep(0.2)
                self.wfile.write(b"0\r\n\r\n")  # the channel ends: the agent opens it again

            def _upgraded(self, frames: list[str]) -> None:
                """101, then JSON lines both ways until `end_channel`: the frames down
                (and any put in `cp.frames` meanwhile), the agent's batches up."""
                self.send_response(101)
                self.send_header("Connection", "Upgrade")
                self.send_header("Upgrade", CHANNEL_UPGRADE)
                self.end_headers()
                self.wfile.flush()
                self.connection.settimeout(0.1)
                pending = b""
                while not cp.end_channel.is_set():
                    for frame in frames:
                        self.connection.sendall(frame.encode() + b"\n")
                    with contextlib.suppress(TimeoutError):
                        data = self.connection.recv(65536)
                        if not data:
                            return
                        pending += data
                    *whole, pending = pending.split(b"\n")
                    for raw in whole:
                        self._batch(json.loads(raw))
                    with cp.lock:
                        frames, cp.frames = cp.frames, []
                self.close_connection = True

            def _batch(self, frame: dict[str, Any]) -> None:
                assert frame.pop("type") == "batch"
                stream = frame.pop("stream")
                LogBatch.model_validate(frame)
                with cp.lock:
                    cp.batches.setdefault(stream, []).append(frame)
                    cp.written += 1
                if stream in cp.gone:
                    stop = LogStop(stream=stream).model_dump_json().encode()
                    self.connection.sendall(stop + b"\n")

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def lines(self, stream: str) -> list[dict[str, Any]]:
        with self.lock:
            return [line for b in self.batches.get(stream, []) for line in b["lines"]]

    def ended(self, stream: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for b in self.batches.get(stream, []) for e in b["ended"]]

    def posts(self, stream: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.batches.get(stream, []))


@pytest.fixture
def fake_cp() -> Iterator[FakeCP]:
    cp = FakeCP()
    yield cp
    cp.stall.clear()
    cp.server.shutdown()
    cp.server.server_close()


@pytest.fixture
def relay_of(fake_cp: FakeCP) -> Iterator[Callable[..., Relay]]:
    made: list[Relay] = []

    def make(**limits: Any) -> Relay:
        client = Client(fake_cp.url, token="node-token")

        def post(stream: str, batch: LogBatch) -> object:
            return client.post(f"/api/agents/n1/logs/{stream}", batch.model_dump())

        relay = Relay(Engine(), post, Limits(**limits))
        made.append(relay)
        return relay

    yield make
    for relay in made:
        relay.close()


@pytest.fixture
def run_container(docker_client: Any, web_image: str) -> Iterator[Callable[[str], str]]:
    """Start a container running `script`; its name. All of them removed after the test."""
    names: list[str] = []

    def run(script: str) -> str:
        name = f"relay-test-{RUN_ID}-{uuid.uuid4().hex[:6]}"
        docker_client.containers.run(
            web_image,
            ["sh", "-c", script],
            name=name,
            detach=True,
            labels={"docklet.test-run": RUN_ID},
        )
        names.append(name)
        return name

    yield run
    for name in names:
        with contextlib.suppress(Exception):  # gone already
            docker_client.containers.get(name).remove(force=True)


def request(stream: str, *names: str, **options: Any) -> LogRequest:
    containers = [
        LogContainer(name=n, slot=i + 1, label=f"web.{i + 1}@n1") for i, n in enumerate(names)
    ]
    return LogRequest(stream=stream, containers=containers, **options)


def numbers(lines: list[dict[str, Any]], word: str = "line") -> list[int]:
    return [int(x["text"].split()[1]) for x in lines if x["text"].startswith(word + " ")]


def test_tail_sends_the_last_lines_of_stdout_and_stderr_then_ends(
    fake_cp: FakeCP, relay_of: Callable[..., Relay], run_container: Callable[[str], str]
) -> None:
    name = run_container(PRINTER)
    time.sleep(1.5)
    relay = relay_of()
    relay.start(request("tail1", name, tail=4))

    wait_for(lambda: not relay.active(), 10, "the stream to end")
    texts = [x["text"] for x in fake_cp.lines("tail1")]
    assert len(texts) == 4
    assert {t.split()[0] for t in texts} == {"line", "err"}  # stdout and stderr both
    assert all(x["label"] == "web.1@n1" and x["time"] is None for x in fake_cp.lines("tail1"))
    assert fake_cp.ended("tail1") == [{"label": "web.1@n1", "reason": LogEnd.DONE}]


def test_follow_relays_new_lines_until_logs_stop(
    fake_cp: FakeCP, relay_of: Callable[..., Relay], run_container: Callable[[str], str]
) -> None:
    name = run_container(PRINTER)
    relay = relay_of()
    relay.handle(request("f1", name, tail=0, follow=True, timestamps=True))

    wait_for(lambda: len(numbers(fake_cp.lines("f1"))) >= 10, 10, "ten lines")
    seen = numbers(fake_cp.lines("f1"))
    assert seen == sorted(seen) and len(set(seen)) == len(seen)  # in order, each once
    assert all(abs(x["time"] - time.time()) < 10 for x in fake_cp.lines("f1"))  # Docker's time

    relay.handle(LogStop(stream="f1"))
    wait_for(lambda: not relay.active(), 3, "the stream to stop")
    wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("logs-f1")], 3)
    posts = len(fake_cp.posts("f1"))
    time.sleep(2.5)  # past an idle batch: nothing more is posted for it
    assert len(fake_cp.posts("f1")) == posts
    relay.handle(request("f1", name, follow=True))  # a late copy of the request is not run
    assert relay.active() == []


def test_since_sends_only_lines_after_it(
    fake_cp: FakeCP, relay_of: Callable[..., Relay], run_container: Callable[[str], str]
) -> None:
    name = run_container(PRINTER)
    time.sleep(1.5)
    relay = relay_of()
    relay.start(request("all", name, tail=10_000))
    wait_for(lambda: not relay.active(), 10, "the first stream to end")
    since = time.time()
    time.sleep(1.0)
    relay.start(request("since", name, tail=10_000, since=since))
    wait_for(lambda: not relay.active(), 10, "the second stream to end")

    before, after = numbers(fake_cp.lines("all")), numbers(fake_cp.lines("since"))
    assert before and after
    assert min(after) > max(before) - 2  # Docker's `since` is to the second at worst
    assert len(after) < 20


def test_the_cp_closing_a_stream_stops_it_at_once(
    fake_cp: FakeCP, relay_of: Callable[..., Relay], run_container: Callable[[str], str]
) -> None:
    name = run_container(PRINTER)
    relay = relay_of()
    relay.start(request("gone1", name, follow=True))
    wait_for(lambda: fake_cp.lines("gone1"), 10, "lines")
    fake_cp.gone.add("gone1")
    wait_for(lambda: not relay.active(), 3, "the stream to stop on a 410")
    posts = len(fake_cp.posts("gone1"))
    time.sleep(1.0)
    assert len(fake_cp.posts("gone1")) == posts


def test_a_container_that_is_gone_ends_with_its_reason_and_the_others_go_on(
    fake_cp: FakeCP, relay_of: Callable[..., Relay], run_container: Callable[[str], str]
) -> None:
    name = run_container(PRINTER)
    relay = relay_of()
    req = LogRequest(
        stream="missing",
        follow=True,
        containers=[
            LogContainer(name=f"relay-test-{RUN_ID}-none", slot=1, label="web.1@n1"),
            LogContainer(name=name, slot=2, label="web.2@n1"),
        ],
    )
    relay.start(req)
    wait_for(lambda: fake_cp.ended("missing"), 10, "the missing container's end")
    assert fake_cp.ended("missing") == [{"label": "web.1@n1", "reason": "container not found"}]
    wait_for(lambda: len(fake_cp.lines("missing")) > 5, 10, "the other container's lines")
    assert relay.active() == ["missing"]


def test_a_container_that_exits_ends_the_stream(
    fake_cp: FakeCP, relay_of: Callable[..., Relay], run_container: Callable[[str], str]
) -> None:
    name = run_container("echo one; sleep 1; echo two")
    relay = relay_of()
    relay.start(request("exits", name, follow=True))
    wait_for(lambda: not relay.active(), 10, "the stream to end with its container")
    assert [x["text"] for x in fake_cp.lines("exits")] == ["one", "two"]
    assert fake_cp.ended("exits") == [{"label": "web.1@n1", "reason": LogEnd.EXITED}]


def test_one_stream_beyond_the_cap_is_told_no(
    fake_cp: FakeCP, relay_of: Callable[..., Relay], run_container: Callable[[str], str]
) -> None:
    name = run_container(PRINTER)
    relay = relay_of(streams=2)
    for stream in ("cap1", "cap2", "cap3"):
        relay.start(request(stream, name, follow=True))
    wait_for(lambda: fake_cp.posts("cap3"), 5, "the refusal")
    assert relay.active() == ["cap1", "cap2"]
    (refusal,) = fake_cp.posts("cap3")
    assert "already follows 2 log streams" in refusal["error"] and not refusal["lines"]
    relay.stop("cap1")
    wait_for(lambda: relay.active() == ["cap2"], 3)
    relay.start(request("cap4", name, follow=True))  # a freed place is taken again
    assert relay.active() == ["cap2", "cap4"]


def test_a_stalled_cp_costs_a_bounded_buffer_and_the_drops_are_told(
    fake_cp: FakeCP, relay_of: Callable[..., Relay], run_container: Callable[[str], str]
) -> None:
    name = run_container(FLOOD)
    relay = relay_of(lines=200)
    fake_cp.stall.set()
    relay.start(request("stall", name, tail=0, follow=True))
    time.sleep(3.0)  # thousands of lines are written while the CP takes none
    (stream,) = relay._streams.values()
    assert len(stream._lines) <= 200  # the buffer's bound, whatever was written
    fake_cp.stall.clear()

    wait_for(lambda: sum(b["dropped"] for b in fake_cp.posts("stall")) > 0, 10, "a drop count")
    posts = fake_cp.posts("stall")
    assert all(len(b["lines"]) <= 200 for b in posts)
    dropped = sum(b["dropped"] for b in posts)
    relay.stop("stall")
    # What was relayed plus what was dropped is every line since the stream began (in order).
    seen = numbers(fake_cp.lines("stall"), "flood")
    assert seen == sorted(seen)
    assert dropped >= 1000


def test_a_frame_on_the_channel_starts_and_stops_a_stream(
    fake_cp: FakeCP, relay_of: Callable[..., Relay], run_container: Callable[[str], str]
) -> None:
    name = run_container(PRINTER)
    relay = relay_of()
    stop = threading.Event()
    start = request("ch1", name, tail=0, follow=True).model_dump_json()
    fake_cp.frames = [f"data: {start}\n\n", ": keepalive\n\n", 'data: {"type": "new"}\n\n']
    channel = Channel(
        Client(fake_cp.url, token="node-token"),
        lambda: ("n1", 1),
        relay.handle,
        lambda exc, generation: False,
        stop,
    )
    thread = threading.Thread(target=channel.loop, daemon=True)
    thread.start()
    try:
        wait_for(lambda: fake_cp.lines("ch1"), 10, "lines of the stream the channel asked for")
        # The channel ended (the fake CP closes it): it is opened again, and a stop on it
        # stops the stream; the unknown frame was skipped without losing the channel.
        fake_cp.frames = [f"data: {LogStop(stream='ch1').model_dump_json()}\n\n"]
        wait_for(lambda: not relay.active(), 10, "the stream to stop")
        assert fake_cp.channels >= 2
    finally:
        stop.set()
        channel.close()
        thread.join(5)
    assert not thread.is_alive()


@pytest.mark.parametrize(
    ("status", "code", "message", "registers_again"),
    [
        (401, "unauthorized", "this node's token was replaced", True),
        (404, "not_found", "no such endpoint: GET /api/agents/n1/channel", False),  # an older CP
        (503, "too_many_channels", "every channel is taken", False),
    ],
)
def test_a_refused_channel_registers_again_only_when_its_token_is_refused(
    fake_cp: FakeCP, status: int, code: str, message: str, registers_again: bool
) -> None:
    fake_cp.refuse = (status, {"error": {"code": code, "message": message, "status": status}})
    refusals: list[int] = []

    def refused(exc: Any, generation: int) -> bool:
        refusals.append(exc.status)
        return exc.status == 401  # what the agent's _reregister_if_refused handles

    stop = threading.Event()
    channel = Channel(Client(fake_cp.url), lambda: ("n1", 1), lambda frame: None, refused, stop)
    channel.backoff.current = 0.01
    threading.Timer(2.0, stop.set).start()  # the older CP's wait ends with the agent
    channel.loop(max_iterations=1)
    assert refusals == ([401] if registers_again else [] if status == 404 else [503])
    assert not channel.open.is_set()


def test_an_upgraded_channel_carries_requests_down_and_batches_up(
    fake_cp: FakeCP, run_container: Callable[[str], str]
) -> None:
    name = run_container(PRINTER)
    fake_cp.upgrade = True
    client = Client(fake_cp.url, token="node-token")
    poster = Poster(client, lambda: "n1")
    relay = Relay(Engine(), poster, Limits())
    stop = threading.Event()
    start = request("up1", name, tail=0, follow=True).model_dump_json()
    fake_cp.frames = [start, '{"type": "keepalive"}', '{"type": "new"}']
    channel = Channel(client, lambda: ("n1", 1), relay.handle, lambda exc, g: False, stop)
    poster.channel = channel
    thread = threading.Thread(target=channel.loop, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(fake_cp.lines("up1")) >= 6, 10, "lines written up the channel")
        assert (fake_cp.posted, fake_cp.channels) == (0, 1)  # no POST; one channel, kept
        seen = numbers(fake_cp.lines("up1"))
        assert seen == sorted(seen) and len(set(seen)) == len(seen)
        fake_cp.gone.add("up1")  # its next batch is answered `logs_stop` down the channel
        wait_for(lambda: not relay.active(), 5, "the stream to stop on logs_stop")
        relay.start(request("up2", name, tail=0, follow=True))
        wait_for(lambda: fake_cp.lines("up2"), 10, "the next stream's lines")
        fake_cp.upgrade = False
        fake_cp.end_channel.set()  # the channel goes down: batches go by POST meanwhile
        wait_for(lambda: fake_cp.posted > 0, 10, "a batch posted")
    finally:
        stop.set()
        channel.close()
        relay.close()
        thread.join(5)
    assert not thread.is_alive()
