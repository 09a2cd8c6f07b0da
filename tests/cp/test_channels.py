"""Agent channels over real HTTP on loopback: detached from cheroot, held by one thread.

Each agent here is `loglab.ScriptedAgent`: a real client that opens its channel
with a real GET (upgraded to JSON lines both ways, or an older agent's chunked
event stream) and reads the frames the CP writes on it.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from urllib.parse import urlsplit

import pytest
from conftest import wait_for
from loglab import ScriptedAgent

from docklet.cp.service.controlplane import ControlPlane
from docklet.wire.protocol import CHANNEL_UPGRADE


def test_a_channel_outlives_its_request_and_a_ring_reaches_it_at_once(
    served_cp: str, cp: ControlPlane
) -> None:
    agent = ScriptedAgent(cp, served_cp, "n1")
    assert agent.open_channel() == 101
    assert agent.channel is not None
    assert agent.channel.getheader("Upgrade") == CHANNEL_UPGRADE
    assert agent.channel.getheader("Connection") == "Upgrade"
    assert agent.channel.getheader("Content-Length") is None  # a 101 has no body
    wait_for(lambda: cp.channels.has(agent.node_id), 5, "the channel to be adopted")
    time.sleep(0.5)  # the worker thread has long returned; the socket lives on
    started = time.monotonic()
    assert cp.channels.ring(agent.node_id, {"type": "logs_stop", "stream": "s1"})
    assert agent.next_frame(kind="logs_stop") == {"type": "logs_stop", "stream": "s1"}
    assert time.monotonic() - started < 1.0
    agent.close_channel()


def test_an_older_agents_channel_without_upgrade_is_the_chunked_event_stream(
    served_cp: str, cp: ControlPlane
) -> None:
    agent = ScriptedAgent(cp, served_cp, "n1")
    assert agent.open_channel(upgrade=False) == 200
    assert agent.channel is not None
    assert agent.channel.getheader("Content-Type").startswith("text/event-stream")
    assert agent.frames.get(timeout=5) == "channel open"
    wait_for(lambda: cp.channels.has(agent.node_id), 5, "the channel to be adopted")
    assert cp.channels.ring(agent.node_id, {"type": "logs_stop", "stream": "s1"})
    assert agent.next_frame(kind="logs_stop") == {"type": "logs_stop", "stream": "s1"}
    agent.close_channel()


def test_two_hundred_channels_hold_no_thread_and_the_api_still_answers(
    served_cp: str, cp: ControlPlane
) -> None:
    assert cp.config.threads == 16
    agents = [ScriptedAgent(cp, served_cp, f"n{i}") for i in range(200)]
    try:
        for agent in agents:
            assert agent.open_channel() == 101
        wait_for(lambda: cp.channels.open_now() == 200, 10, "200 channels")
        started = time.monotonic()
        with urllib.request.urlopen(f"{served_cp}/api/health", timeout=5) as answer:
            assert answer.status == 200
        assert time.monotonic() - started < 1.0
        for agent in (agents[0], agents[-1]):
            assert cp.channels.ring(agent.node_id, {"type": "logs_stop", "stream": "x"})
            assert agent.next_frame(kind="logs_stop")["stream"] == "x"
    finally:
        for agent in agents:
            agent.close_channel()
    wait_for(lambda: cp.channels.open_now() == 0, 5, "every channel forgotten")


def test_a_new_channel_replaces_the_older_one_which_ends_cleanly(
    served_cp: str, cp: ControlPlane
) -> None:
    first = ScriptedAgent(cp, served_cp, "n1")
    assert first.open_channel() == 101
    wait_for(lambda: cp.channels.has(first.node_id), 5, "the first channel")
    again = ScriptedAgent(cp, served_cp, "n1")  # the same node, registered again
    assert again.open_channel() == 101
    with pytest.raises(AssertionError, match="closed"):
        first.next_frame(timeout=5)  # its answer ended
    assert cp.channels.open_now() == 1
    assert cp.channels.ring(again.node_id, {"type": "logs_stop", "stream": "y"})
    assert again.next_frame(kind="logs_stop")["stream"] == "y"
    again.close_channel()


def test_a_channel_the_agent_closed_is_forgotten_at_once(served_cp: str, cp: ControlPlane) -> None:
    agent = ScriptedAgent(cp, served_cp, "n1")
    agent.open_channel()
    wait_for(lambda: cp.channels.has(agent.node_id), 5, "the channel")
    agent.close_channel()
    wait_for(lambda: not cp.channels.has(agent.node_id), 2, "the channel forgotten")
    assert not cp.channels.ring(agent.node_id, {"type": "logs_stop", "stream": "z"})


def test_keepalives_come_on_every_channel(served_cp: str, cp: ControlPlane) -> None:
    cp.channels.keepalive = 0.3
    agent = ScriptedAgent(cp, served_cp, "n1")
    agent.open_channel()
    deadline = time.monotonic() + 5
    seen = []
    while "keepalive" not in seen and time.monotonic() < deadline:
        seen.append(agent.frames.get(timeout=5))
    assert "keepalive" in seen
    agent.close_channel()


def test_a_channel_that_does_not_read_is_closed_not_waited_for(
    served_cp: str, cp: ControlPlane
) -> None:
    node = ScriptedAgent(cp, served_cp, "n1")
    parts = urlsplit(served_cp)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts.hostname, parts.port))
    request = (
        f"GET /api/agents/{node.node_id}/channel HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {node.token}\r\n\r\n"
    )
    sock.sendall(request.encode())  # and never reads again
    wait_for(lambda: cp.channels.has(node.node_id), 5, "the channel")
    big = {"type": "logs_stop", "stream": "s", "padding": "x" * 65536}
    rings = [cp.channels.ring(node.node_id, big) for _ in range(2000)]
    assert False in rings  # its send buffer filled: closed, never blocked on
    assert not cp.channels.has(node.node_id)
    sock.close()


def test_the_channel_cap_answers_503_and_a_wrong_token_401(
    served_cp: str, cp: ControlPlane
) -> None:
    cp.config = cp.config.model_copy(update={"agent_channels": 1})  # --agent-channels 1
    first, second = ScriptedAgent(cp, served_cp, "n1"), ScriptedAgent(cp, served_cp, "n2")
    assert first.open_channel() == 101
    wait_for(lambda: cp.channels.has(first.node_id), 5, "the first channel")
    assert second.open_channel() == 503
    assert first.open_channel() == 101  # a node's own new channel replaces its older one
    second.token = "dkn_wrong"
    assert second.open_channel() == 401
    first.close_channel()


def test_an_http_1_0_channel_ends_at_once_instead_of_being_kept(
    served_cp: str, cp: ControlPlane
) -> None:
    """Frames are HTTP/1.1 chunks: a client that cannot take them is not adopted."""
    node = ScriptedAgent(cp, served_cp, "n1")
    parts = urlsplit(served_cp)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(
            f"GET /api/agents/{node.node_id}/channel HTTP/1.0\r\n"
            f"Authorization: Bearer {node.token}\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b": channel open\n\n")
    assert not cp.channels.has(node.node_id)
