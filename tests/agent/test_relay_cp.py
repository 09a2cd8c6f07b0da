"""The agent's relay against the real CP (served on loopback) and the real Docker engine:
a log request reaches it on its channel, or with a heartbeat when it has none."""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import ADMIN_TOKEN, wait_for
from test_agent import make_agent

from docklet.agent.loop import Agent
from docklet.wire.client import Client

pytestmark = pytest.mark.docker

PRINTER = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done"


@pytest.fixture
def agent(served_cp: str, cp: Any, docker_client: Any, web_image: str) -> Iterator[Agent]:
    """A registered agent running a 1-replica app `talk` that prints ten lines a second."""
    a = make_agent(served_cp, docker_client, join_token=cp.tokens.join_token())
    a.register()
    body = {"name": "talk", "image": web_image, "command": ["sh", "-c", PRINTER]}
    Client(served_cp, token=ADMIN_TOKEN).post("/api/apps", body)
    try:
        assert a.poll_once() == 1
        assert a.drain(timeout=30)
        a.heartbeat_once()  # the CP learns where the container runs
        yield a
    finally:
        a.stop.set()
        a.channel.close()
        a.relay.close()
        a.drain(timeout=30)
        for c in docker_client.containers.list(
            ignore_removed=True, all=True, filters={"label": f"docklet.cluster={a.cluster_id}"}
        ):
            c.remove(force=True)


class Reader:
    """GET /api/apps/talk/logs?follow=1 as the CLI asks for it; its data lines, as they come."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.started = time.monotonic()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        self.conn.request(
            "GET",
            "/api/apps/talk/logs?follow=1&tail=0",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": "text/event-stream"},
        )
        answer = self.conn.getresponse()
        assert answer.status == 200, answer.read()
        try:
            for raw in iter(answer.readline, b""):
                if raw.startswith(b"data: ") and b'"text"' in raw:
                    self.lines.put(json.loads(raw[6:]))
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass  # closed by the test (http.client's reads fail in several ways then)

    def first(self, timeout: float) -> tuple[float, dict[str, Any]]:
        line = self.lines.get(timeout=timeout)
        return time.monotonic() - self.started, line

    def close(self) -> None:
        if self.conn.sock is not None:
            self.conn.sock.shutdown(2)
        self.conn.close()


def posted_batches(cp: Any) -> float:
    """Batches the CP took by POST (its API request counter for that route)."""
    return sum(
        sample.value
        for metric in cp.metrics.requests.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and "/logs/" in sample.labels["route"]
    )


def test_a_log_request_comes_on_the_channel_and_the_caller_leaving_stops_it(
    agent: Agent, served_cp: str, cp: Any
) -> None:
    channel = threading.Thread(target=agent.channel.loop, daemon=True)
    channel.start()
    wait_for(agent.channel.open.is_set, 10, "the channel to open")

    reader = Reader(served_cp)
    took, line = reader.first(timeout=10)
    assert took < 5  # no heartbeat was sent meanwhile: the channel carried the request
    assert line["label"] == "talk.1@node-a" and line["text"].startswith("line ")
    assert len(agent.relay.active()) == 1
    for _ in range(10):  # ... and the lines came back up it: not one POST
        reader.first(timeout=5)
    assert posted_batches(cp) == 0

    reader.close()  # the caller leaves: the CP closes the stream, the agent stops following
    wait_for(lambda: not agent.relay.active(), 10, "the agent to stop following")


def test_without_a_channel_the_request_comes_with_the_next_heartbeat(
    agent: Agent, served_cp: str, cp: Any
) -> None:
    reader = Reader(served_cp)
    with pytest.raises(queue.Empty):
        reader.first(timeout=1.0)  # no channel, no heartbeat: the request waits at the CP
    assert agent.relay.active() == []
    agent.heartbeat_once()  # its answer carries the request
    _, line = reader.first(timeout=10)
    assert line["label"] == "talk.1@node-a"
    assert posted_batches(cp) > 0  # no channel: its batches are POSTed
    reader.close()
    wait_for(lambda: not agent.relay.active(), 10, "the agent to stop following")
