"""GET /api/events as a stream (Server-Sent Events), over real HTTP on loopback."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import ADMIN_TOKEN, wait_for
from test_rollout import FAST, step
from test_scheduler import Agent, put_app
from test_tasks import register_node

from docklet.common.status import EventKind
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.store import events


@pytest.fixture(autouse=True)
def quick_keepalive(cp: ControlPlane) -> None:
    """Keepalives every 0.2s: a closed client is noticed at the next write, so streams give
    their slots back (and the server stops) within a moment."""
    cp.streams.keepalive = 0.2


class SSE:
    """A reader of one event stream: its events (id, data) and its comment lines, as they come."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.events: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            for raw in self.answer:
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line:
                    name, _, value = line.partition(": ")
                    fields[name] = value
                elif "data" in fields:
                    self.events.append({"id": int(fields["id"]), **json.loads(fields["data"])})
                    fields = {}
        except (OSError, ValueError, AttributeError):  # AttributeError: closed meanwhile
            pass
        finally:
            self.ended.set()

    def messages(self) -> list[str]:
        return [e["message"] for e in self.events]

    def close(self) -> None:
        self.answer.close()


def open_stream(url: str, query: str = "", last_id: int | None = None) -> Any:
    headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {ADMIN_TOKEN}"}
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    request = urllib.request.Request(f"{url}/api/events{query}", headers=headers)
    return urllib.request.urlopen(request, timeout=30)


@contextmanager
def stream(url: str, query: str = "", last_id: int | None = None) -> Iterator[SSE]:
    answer = open_stream(url, query, last_id)
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    reader = SSE(answer)
    try:
        yield reader
    finally:
        reader.close()


def record(cp: ControlPlane, message: str, app: str | None = None) -> int:
    with cp.store.write() as db:
        events.record(db, EventKind.APP_DESIRED, message, app=app)
    return events.newest_id(cp.store)


def error_of(url: str, query: str = "", headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{url}/api/events{query}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {**json.loads(exc.read()), "retry_after": exc.headers["Retry-After"]}


def test_a_rollout_is_seen_on_an_open_stream_as_it_moves(served_cp: str, cp: ControlPlane) -> None:
    a = Agent(cp, "a")
    put_app(cp, "web", replicas=2, rollout=FAST)
    step(cp, a)
    step(cp, a)
    with stream(served_cp, "?app=web") as sse:
        wait_for(lambda: sse.comments, 5, "the stream to open")
        put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=FAST)
        canary_seen = wait_for(
            lambda: any("pending → canary" in m for m in sse.messages()), 5, "the canary event"
        )
        assert canary_seen and not any("→ stable" in m for m in sse.messages())
        for _ in range(5):
            step(cp, a)
        wait_for(lambda: any("→ stable" in m for m in sse.messages()), 5, "the stable event")
    ids = [e["id"] for e in sse.events]
    assert ids == sorted(set(ids))  # in order, none twice
    assert {e["app"] for e in sse.events} == {"web"}
    assert {"id", "at", "kind", "message", "node_id", "task_id"} <= set(sse.events[0])


def test_a_new_event_arrives_within_a_fraction_of_a_second(
    served_cp: str, cp: ControlPlane
) -> None:
    with stream(served_cp) as sse:
        wait_for(lambda: sse.comments, 5, "the stream to open")
        took = []
        for i in range(5):
            started = time.monotonic()
            record(cp, f"ping {i}")
            wait_for(lambda i=i: f"ping {i}" in sse.messages(), 5, f"ping {i}")
            took.append(time.monotonic() - started)
    assert max(took) < 0.5, took  # woken by the event log's bell, not a poll


def test_last_event_id_resumes_with_exactly_the_missed_events(
    served_cp: str, cp: ControlPlane
) -> None:
    record(cp, "before")
    with stream(served_cp) as sse:
        first = record(cp, "seen 1")
        record(cp, "seen 2", app="other")
        wait_for(lambda: len(sse.events) == 2, 5, "two events")
    assert sse.messages() == ["seen 1", "seen 2"]  # from when it opened: not "before"
    seen = sse.events[-1]["id"]
    missed = [record(cp, f"missed {i}", app="web" if i % 2 else None) for i in range(3)]
    with stream(served_cp, last_id=seen) as again:
        wait_for(lambda: len(again.events) >= 3, 5, "the missed events")
        record(cp, "after")
        wait_for(lambda: len(again.events) == 4, 5, "the new one")
    assert [e["id"] for e in again.events[:3]] == missed
    assert again.messages() == ["missed 0", "missed 1", "missed 2", "after"]
    with stream(served_cp, f"?since={first}&app=other") as since_id:
        wait_for(lambda: since_id.events, 5, "the other app's event")
        time.sleep(0.3)
    assert since_id.messages() == ["seen 2"]  # after id `first`, of that app only


def test_since_a_duration_and_the_list_keep_working(served_cp: str, cp: ControlPlane) -> None:
    with cp.store.write() as db:
        db.execute(
            "INSERT INTO events (at, kind, app, message) VALUES (?, 'app', 'web', 'old')",
            (time.time() - 3600,),
        )
    record(cp, "recent", app="web")
    with stream(served_cp, "?since=10m") as sse:
        wait_for(lambda: sse.events, 5, "the recent event")
        time.sleep(0.3)
    assert sse.messages() == ["recent"]
    status, listed = error_of(served_cp, "?app=web")
    assert status == 200 and [e["message"] for e in listed] == ["old", "recent"]
    status, listed = error_of(served_cp, "?app=web&since=30m")
    assert status == 200 and [e["message"] for e in listed] == ["recent"]
    status, listed = error_of(served_cp, f"?since={listed[0]['id'] - 1}&limit=1")
    assert status == 200 and [e["message"] for e in listed] == ["recent"]


@pytest.mark.parametrize(
    ("query", "headers", "says"),
    [
        ("?since=yesterday", {}, "an event id (e.g. 1234) or a duration"),
        ("?since=" + "9" * 5000, {}, "an event id"),
        ("?since=%C2%B2", {}, "an event id"),
        ("?app=" + "x" * 300, {}, "at most 253"),
        ("", {"Last-Event-ID": "abc"}, "Last-Event-ID is an event id"),
        ("", {"Last-Event-ID": "1" * 30}, "Last-Event-ID is an event id"),
    ],
)
def test_bad_input_is_a_clear_400(served_cp: str, query: str, headers: dict, says: str) -> None:
    status, answer = error_of(served_cp, query, {"Accept": "text/event-stream", **headers})
    assert status == 400 and answer["error"]["code"] == "bad_request"
    assert says in answer["error"]["message"]


def test_a_read_token_is_needed(served_cp: str) -> None:
    request = urllib.request.Request(
        f"{served_cp}/api/events", headers={"Accept": "text/event-stream"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    assert json.loads(refused.value.read())["error"]["code"] == "unauthorized"


def test_the_cap_answers_503_and_heartbeats_and_health_are_still_served(
    served_cp: str, cp: ControlPlane
) -> None:
    slots = cp.config.event_stream_slots
    assert slots >= 1 and cp.config.long_poll_slots + slots <= cp.config.threads // 2
    node, token = register_node(cp, "n1")
    readers = [SSE(open_stream(served_cp)) for _ in range(slots)]
    try:
        wait_for(lambda: cp.streams.open_now() == slots, 5, "every stream slot taken")
        status, answer = error_of(served_cp, headers={"Accept": "text/event-stream"})
        assert status == 503 and answer["error"]["code"] == "too_many_streams"
        assert answer["retry_after"] == "5" and "event streams" in answer["error"]["message"]
        for _ in range(10):
            started = time.monotonic()
            beat = urllib.request.Request(
                f"{served_cp}/api/agents/{node}/heartbeat",
                data=json.dumps({"report_seq": 0, "containers": []}).encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(beat, timeout=5) as answer:
                assert answer.status == 200
            with urllib.request.urlopen(f"{served_cp}/api/health", timeout=5) as answer:
                assert answer.status == 200
            assert time.monotonic() - started < 1.0
        status, listed = error_of(served_cp, "?limit=5")  # the list needs no stream slot
        assert status == 200 and isinstance(listed, list)
        wait_for(lambda: all(r.comments.count("keepalive") >= 2 for r in readers), 5, "keepalives")
    finally:
        for r in readers:
            r.close()
    # A client that left gives its slot back (noticed at its next write, the keepalive).
    wait_for(lambda: cp.streams.open_now() == 0, 5, "the slots to come back")
    with stream(served_cp) as sse:
        wait_for(lambda: sse.comments, 5, "a stream again")


def test_a_stream_ends_after_its_time_and_says_how_to_go_on(
    served_cp: str, cp: ControlPlane
) -> None:
    cp.config = cp.config.model_copy(update={"event_stream_time": 1.0})
    cp.streams.keepalive = 0.3
    started = time.monotonic()
    with stream(served_cp) as sse:
        assert sse.ended.wait(5)
    assert 0.9 < time.monotonic() - started < 3
    assert sse.comments[-1] == "the stream ends here; reconnect with Last-Event-ID"
    assert "keepalive" in sse.comments
    wait_for(lambda: cp.streams.open_now() == 0, 5, "its slot back")
