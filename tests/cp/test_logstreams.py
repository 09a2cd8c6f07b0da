"""Log streams (GET /api/apps/{app}/logs) over real HTTP on loopback, relayed from agents.

The agents are `loglab.ScriptedAgent`s: real clients that open their channel,
read the log requests the CP rings on it, and write batches of lines up it (or
POST them, as an older agent does, and as today's does while it has no channel).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import silence, wait_for
from loglab import LogReader, ScriptedAgent, deploy, put_app

from docklet.common import defaults
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.service.logstreams import LogQuery, Relay, Source
from docklet.wire.protocol import LogBatch, LogLine

Agents = Callable[..., list[ScriptedAgent]]


@pytest.fixture
def agents(served_cp: str, cp: ControlPlane) -> Iterator[Agents]:
    """Scripted agents that keep beating (and, unless told, hold a channel open)."""
    made: list[ScriptedAgent] = []

    def make(*names: str, channel: bool = True, upgrade: bool = True) -> list[ScriptedAgent]:
        out = []
        for name in names:
            agent = ScriptedAgent(cp, served_cp, name)
            agent.keep_beating()
            if channel:
                assert agent.open_channel(upgrade=upgrade) == (101 if upgrade else 200)
                wait_for(lambda a=agent: cp.channels.has(a.node_id), 5, f"{name}'s channel")
            out.append(agent)
        made.extend(out)
        return out

    yield make
    for agent in made:
        agent.stop()


@pytest.fixture(autouse=True)
def quick_keepalive(cp: ControlPlane) -> None:
    """A caller that left is noticed at the next keepalive: every 0.2s here."""
    cp.logstreams.keepalive = 0.2


def test_a_log_request_reaches_a_node_that_holds_no_poll_at_once(
    served_cp: str, cp: ControlPlane, agents: Agents
) -> None:
    (n1,) = agents("n1")
    deploy(cp, [n1], "web", 2)
    assert cp.polls.waiting() == 0  # no long-poll: the channel is what reaches it
    started = time.monotonic()
    reader = LogReader(served_cp, "web", "tail=5&timestamps=1&since=10m")
    asked = n1.next_frame(kind="logs")
    assert time.monotonic() - started < 1.0
    assert asked["tail"] == 5 and asked["timestamps"] is True and asked["follow"] is False
    assert abs(asked["since"] - (time.time() - 600)) < 5
    assert [(c["slot"], c["label"]) for c in asked["containers"]] == [
        (1, "web.1@n1"),
        (2, "web.2@n1"),
    ]
    assert asked["containers"][0]["name"] == "docklet.web.1.r1"
    reader.close()


def test_lines_reach_the_caller_in_order_with_their_labels_and_the_stream_ends(
    served_cp: str, cp: ControlPlane, agents: Agents
) -> None:
    n1, n2 = agents("n1", "n2")
    slots = deploy(cp, [n1, n2], "web", 3)
    reader = LogReader(served_cp, "web")
    assert reader.status == 200
    for agent in (n1, n2):
        asked = agent.next_frame(kind="logs")
        labels = [c["label"] for c in asked["containers"]]
        for i in range(3):  # up the channel: no request, no answer
            agent.send(asked["stream"], [(label, f"line {i}") for label in labels])
        ended = [{"label": label, "reason": "end of logs"} for label in labels]
        agent.send(asked["stream"], [], ended=ended)
    reader.wait(lambda r: r.end is not None, what="the end")
    assert reader.end == {"reason": "every container's lines ended"}
    expected = {f"web.{slot}@{agent.node_id}" for slot, agent in slots.items()}
    assert {label for label, _ in reader.texts()} == expected
    for label in expected:
        assert [t for lab, t in reader.texts() if lab == label] == ["line 0", "line 1", "line 2"]
    line = reader.lines[0]
    assert set(line) == {"label", "slot", "node", "text", "time"}
    assert line["label"] == f"web.{line['slot']}@{line['node']}"
    assert reader.notices == []
    # The end event reaches the reader a moment before the server's worker finishes the
    # answer and gives the slot back.
    wait_for(lambda: cp.logstreams.open_now() == 0, 5, "the stream's slot given back")


def test_a_container_that_exits_is_a_notice(
    served_cp: str, cp: ControlPlane, agents: Agents
) -> None:
    (n1,) = agents("n1")
    deploy(cp, [n1], "web", 1)
    reader = LogReader(served_cp, "web", "follow=1")
    stream = n1.next_frame(kind="logs")["stream"]
    n1.post(
        stream, [("web.1@n1", "bye")], ended=[{"label": "web.1@n1", "reason": "container exited"}]
    )
    reader.wait(lambda r: r.end is not None, what="the end")
    assert reader.texts() == [("web.1@n1", "bye")]
    assert reader.notices == ["web.1@n1: container exited"]
    assert reader.end == {"reason": "every container ended"}


def test_a_stalled_caller_makes_the_cp_drop_lines_and_say_so(
    served_cp: str, cp: ControlPlane, agents: Agents
) -> None:
    (n1,) = agents("n1")
    deploy(cp, [n1], "web", 1)
    reader = LogReader(served_cp, "web", "follow=1", read=False)  # reads nothing yet
    stream = n1.next_frame(kind="logs")["stream"]
    text = "x" * 4000
    for batch in range(4):  # 2,000 lines, 8 MB: more than the kernel's buffers and the CP's hold
        status, _ = n1.post(stream, [("web.1@n1", f"{batch}:{i}:{text}") for i in range(500)])
        assert status == 200
    relay = cp.logstreams.relay(stream)
    assert relay is not None
    assert relay.held_most <= defaults.LOG_BUFFER_LINES
    assert relay.size <= defaults.LOG_BUFFER_BYTES
    reader.start()  # reads again, within the server's socket timeout
    assert n1.post(stream, [("web.1@n1", "the last line")])[0] == 200
    reader.wait(lambda r: r.lines and r.lines[-1]["text"] == "the last line", 20, "the last line")
    dropped = [n for n in reader.notices if "lines dropped (the reader was slow)" in n]
    assert dropped, reader.notices
    count = sum(int(n.split()[1]) for n in dropped)
    assert len(reader.lines) + count == 2001
    reader.close()


def test_a_caller_that_leaves_stops_its_agents_within_seconds(
    served_cp: str, cp: ControlPlane, agents: Agents
) -> None:
    cp.logstreams.keepalive = defaults.LOG_KEEPALIVE  # noticed before any write fails
    (n1,) = agents("n1")
    deploy(cp, [n1], "web", 1)
    reader = LogReader(served_cp, "web", "follow=1")
    stream = n1.next_frame(kind="logs")["stream"]
    assert n1.post(stream, [("web.1@n1", "hello")])[0] == 200
    reader.wait(lambda r: r.lines, what="the first line")
    reader.close()
    started = time.monotonic()
    assert n1.next_frame(timeout=5, kind="logs_stop") == {"type": "logs_stop", "stream": stream}
    n1.send(stream, [("web.1@n1", "anyone?")])  # a stop lost: the next batch is told again
    assert n1.next_frame(timeout=5, kind="logs_stop") == {"type": "logs_stop", "stream": stream}
    status, answer = n1.post(stream, [("web.1@n1", "anyone?")])  # and by POST, 410
    assert (status, answer["error"]["code"]) == (410, "stream_closed")
    assert time.monotonic() - started < 1.5
    assert cp.logstreams.open_now() == 0


def test_a_node_without_a_channel_is_asked_in_its_heartbeat_answer(
    served_cp: str, cp: ControlPlane, agents: Agents
) -> None:
    (n1,) = agents("n1", channel=False)
    deploy(cp, [n1], "web", 1)
    reader = LogReader(served_cp, "web", "follow=1")
    (asked,) = n1.heartbeat()["logs"]
    assert asked["type"] == "logs" and asked["containers"][0]["label"] == "web.1@n1"
    assert "logs" not in n1.heartbeat()  # given once
    assert n1.post(asked["stream"], [("web.1@n1", "via the heartbeat")])[0] == 200
    reader.wait(lambda r: r.lines, what="the line")
    reader.close()


def test_a_node_that_does_not_answer_is_a_notice(
    served_cp: str, cp: ControlPlane, agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(defaults, "LOG_ANSWER_WAIT", 0.5)
    n1, n2 = agents("n1", "n2")
    deploy(cp, [n1, n2], "web", 2)
    reader = LogReader(served_cp, "web")
    asked = n1.next_frame(kind="logs")
    ended = [{"label": c["label"], "reason": "end of logs"} for c in asked["containers"]]
    n1.post(asked["stream"], [(c["label"], "here") for c in asked["containers"]], ended=ended)
    reader.wait(lambda r: r.end is not None, what="the end")  # n2 never answers
    assert reader.notices == ["n2 did not answer within 0.5s"]
    assert reader.texts() == [(c["label"], "here") for c in asked["containers"]]


def test_the_caps_per_cp_503_and_per_node_429(
    served_cp: str, cp: ControlPlane, agents: Agents
) -> None:
    n1, n2, n3 = agents("n1", "n2", "n3")
    for app, node in (("a1", n1), ("a2", n2), ("a3", n3)):
        put_app(cp, app, replicas=1, placement={"nodes": [node.node_id]})
        node.run(app, 1, 1)
    assert cp.config.log_stream_slots == 2
    cp.config = cp.config.model_copy(update={"log_streams_per_node": 1})
    first = LogReader(served_cp, "a1", "follow=1")
    again = LogReader(served_cp, "a1", "follow=1")
    assert (again.status, again.error["code"], again.retry_after) == (429, "too_many_streams", "5")
    assert "n1 already serves 1 log streams" in again.error["message"]
    second = LogReader(served_cp, "a2", "follow=1")
    third = LogReader(served_cp, "a3", "follow=1")
    assert (third.status, third.error["code"], third.retry_after) == (503, "too_many_streams", "5")
    assert "--log-streams" in third.error["message"]
    started = time.monotonic()  # every log slot taken: heartbeats have threads of their own
    n3.heartbeat()
    assert time.monotonic() - started < 1.0
    first.close()  # and run again at once: the slot of a caller that hung up is free
    time.sleep(0.1)  # (its FIN crossing the loopback)
    with_slot = LogReader(served_cp, "a3", "follow=1")
    assert with_slot.status == 200
    for reader in (second, with_slot):
        reader.close()


def test_a_batch_for_another_nodes_stream_is_refused(
    served_cp: str, cp: ControlPlane, agents: Agents
) -> None:
    n1, n2 = agents("n1", "n2")
    put_app(cp, "web", replicas=1, placement={"nodes": [n1.node_id]})
    n1.run("web", 1, 1)
    reader = LogReader(served_cp, "web", "follow=1")
    stream = n1.next_frame(kind="logs")["stream"]
    status, answer = n2.post(stream, [("web.1@n1", "forged")])
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    status, answer = n2.post("no-such-stream", [("web.1@n1", "forged")])
    assert (status, answer["error"]["code"]) == (410, "stream_closed")
    n1.post(stream, [("web.1@n1", "real")])
    reader.wait(lambda r: r.lines, what="the real line")
    assert reader.texts() == [("web.1@n1", "real")]
    reader.close()


def test_on_the_channel_a_batch_for_another_nodes_or_no_stream_is_told_to_stop(
    served_cp: str, cp: ControlPlane, agents: Agents
) -> None:
    n1, n2 = agents("n1", "n2")
    put_app(cp, "web", replicas=1, placement={"nodes": [n1.node_id]})
    n1.run("web", 1, 1)
    reader = LogReader(served_cp, "web", "follow=1")
    stream = n1.next_frame(kind="logs")["stream"]
    n2.send(stream, [("web.1@n1", "forged")])
    assert n2.next_frame(kind="logs_stop") == {"type": "logs_stop", "stream": stream}
    n2.send("no-such-stream", [("web.1@n1", "forged")])
    assert n2.next_frame(kind="logs_stop")["stream"] == "no-such-stream"
    n2.write(b'{"type": "batch", "stream": "s", "lines": "not a list"}\nnot json\n[1]\n')
    n1.send(stream, [("web.1@n1", "real")])
    reader.wait(lambda r: r.lines, what="the real line")
    assert reader.texts() == [("web.1@n1", "real")]
    assert cp.channels.has(n2.node_id)  # junk is skipped, the channel kept
    reader.close()


def test_an_older_agent_without_the_upgrade_posts_its_batches(
    served_cp: str, cp: ControlPlane, agents: Agents
) -> None:
    (n1,) = agents("n1", upgrade=False)
    deploy(cp, [n1], "web", 1)
    reader = LogReader(served_cp, "web", "follow=1")
    stream = n1.next_frame(kind="logs")["stream"]
    assert n1.post(stream, [("web.1@n1", "by POST")]) == (200, {"open": True})
    reader.wait(lambda r: r.lines, what="the line")
    assert reader.texts() == [("web.1@n1", "by POST")]
    reader.close()
    assert n1.next_frame(timeout=5, kind="logs_stop")["stream"] == stream


def test_a_node_that_floods_its_channel_is_cut_off_and_the_others_go_on(
    served_cp: str, cp: ControlPlane, agents: Agents, caplog: pytest.LogCaptureFixture
) -> None:
    cp.channels.max_line = 64 * 1024
    cp.channels.rate_frames = 50
    n1, n2, n3 = agents("n1", "n2", "n3")
    put_app(cp, "web", replicas=1, placement={"nodes": [n1.node_id]})
    n1.run("web", 1, 1)
    reader = LogReader(served_cp, "web", "follow=1")
    stream = n1.next_frame(kind="logs")["stream"]
    with caplog.at_level(logging.WARNING, logger="docklet.cp.service.channels"):
        n2.write(b'{"type": "batch", "stream": "' + b"x" * 70_000)  # a line over --max-body
        wait_for(lambda: not cp.channels.has(n2.node_id), 5, "n2 cut off (a line too long)")
        for _ in range(60):  # more frames in a second than any agent sends
            n3.send("no-such-stream", [])
        wait_for(lambda: not cp.channels.has(n3.node_id), 5, "n3 cut off (too many frames)")
    n1.send(stream, [("web.1@n1", "unaffected")])
    reader.wait(lambda r: r.lines, what="n1's line")
    assert cp.channels.has(n1.node_id)
    with pytest.raises(AssertionError, match="closed"):
        n2.next_frame(timeout=5)
    said = [r.getMessage() for r in caplog.records]
    too_long = "a frame over 65536 bytes (the CP's --max-body)"
    assert f"node {n2.node_id}: channel closed: {too_long}" in said
    assert f"node {n3.node_id}: channel closed: over 50 frames a second: it floods" in said
    reader.close()


def test_what_cannot_be_shown_is_a_clear_error(
    served_cp: str, cp: ControlPlane, agents: Agents
) -> None:
    n1, _n2 = agents("n1", "n2")  # n2 runs none of it
    missing = LogReader(served_cp, "nope")
    assert (missing.status, missing.error["code"]) == (404, "app_not_found")
    put_app(cp, "empty", replicas=1)
    empty = LogReader(served_cp, "empty")
    assert (empty.status, empty.error["code"]) == (404, "no_containers")
    put_app(cp, "web", replicas=1, placement={"nodes": [n1.node_id]})
    n1.run("web", 1, 1)
    for query in ("slot=7", "node=n2", "revision=v9"):
        answer = LogReader(served_cp, "web", query)
        assert (answer.status, answer.error["code"]) == (404, "no_containers"), query
    n1.stop()
    cp.liveness.started_at = time.time() - 7200
    silence(cp, n1.node_id, time.time() - 3600)
    offline = LogReader(served_cp, "web")
    assert (offline.status, offline.error["code"]) == (503, "node_offline")
    assert offline.error["message"].startswith("node n1 is offline (last seen 60m ago)")


def test_the_kept_containers_of_a_revision(
    served_cp: str, cp: ControlPlane, agents: Agents
) -> None:
    (n1,) = agents("n1")
    put_app(cp, "web", replicas=1, placement={"nodes": [n1.node_id]})
    n1.run("web", 1, 1, state="exited")  # v1's, kept stopped after a rollback
    put_app(cp, "web", replicas=1, placement={"nodes": [n1.node_id]}, env={"V": "2"})
    n1.run("web", 1, 2)
    reader = LogReader(served_cp, "web", "revision=v1")
    asked = n1.next_frame(kind="logs")
    assert [c["name"] for c in asked["containers"]] == ["docklet.web.1.r1"]
    reader.close()


@pytest.mark.parametrize(
    "query",
    [
        "tail=-1",
        "tail=10001",
        "tail=x",
        "since=yesterday",
        "slot=two",
        "revision=3x",
        "follow=maybe",
        "node=a%20b",
    ],
)
def test_bad_parameters_are_400s(
    served_cp: str, cp: ControlPlane, agents: Agents, query: str
) -> None:
    put_app(cp, "web", replicas=1)
    answer = LogReader(served_cp, "web", query)
    assert (answer.status, answer.error["code"]) == (400, "bad_request")
    assert "query parameter" in answer.error["message"]


def test_metrics_count_log_streams_and_channels(
    served_cp: str, cp: ControlPlane, agents: Agents
) -> None:
    (n1,) = agents("n1")
    deploy(cp, [n1], "web", 1)
    reader = LogReader(served_cp, "web", "follow=1")
    n1.next_frame(kind="logs")
    text = cp.metrics.exposition()[0].decode()
    assert "docklet_log_streams 1.0" in text
    assert "docklet_agent_channels 1.0" in text
    reader.close()


def test_a_node_offline_among_several_is_a_notice_and_asked_for_an_error(
    served_cp: str, cp: ControlPlane, agents: Agents
) -> None:
    n1, n2 = agents("n1", "n2")
    deploy(cp, [n1, n2], "web", 2)
    n2.stop()
    cp.liveness.started_at = time.time() - 7200
    silence(cp, n2.node_id, time.time() - 3600)
    reader = LogReader(served_cp, "web", "follow=1")
    assert reader.status == 200
    asked = n1.next_frame(kind="logs")
    assert {c["label"].split("@")[1] for c in asked["containers"]} == {"n1"}
    reader.wait(lambda r: r.notices, what="the notice")
    assert reader.notices == [
        "node n2 is offline (last seen 60m ago): its containers are not shown"
    ]
    reader.close()
    only = LogReader(served_cp, "web", "node=n2")
    assert (only.status, only.error["code"]) == (503, "node_offline")


def test_streams_hold_when_the_servers_descriptors_are_past_1024(
    served_cp: str, cp: ControlPlane, agents: Agents, tmp_path: Path
) -> None:
    """A thousand agents' sockets put a caller's past select()'s reach: a stream must not
    take that for its caller hanging up."""
    held = [(tmp_path / "fd").open("w") for _ in range(1100)]
    try:
        (n1,) = agents("n1")
        deploy(cp, [n1], "web", 1)
        reader = LogReader(served_cp, "web", "follow=1")
        stream = n1.next_frame(kind="logs")["stream"]
        time.sleep(1.0)  # a few looks at whether its caller hung up
        assert n1.post(stream, [("web.1@n1", "still here")])[0] == 200
        reader.wait(lambda r: r.lines, what="the line")
        reader.close()
    finally:
        for f in held:
            f.close()


def test_a_request_held_for_a_heartbeat_goes_on_a_channel_opened_meanwhile(
    served_cp: str, cp: ControlPlane, agents: Agents
) -> None:
    (n1,) = agents("n1", channel=False)
    deploy(cp, [n1], "web", 1)
    reader = LogReader(served_cp, "web", "follow=1")
    wait_for(lambda: cp.channels._held, 5, "the request held for n1's heartbeat")
    assert n1.open_channel() == 101  # an agent reconnecting: its channel, before a heartbeat
    asked = n1.next_frame(kind="logs")
    assert asked["containers"][0]["label"] == "web.1@n1"
    assert "logs" not in n1.heartbeat()  # given once, on the channel
    reader.close()


def test_a_stream_never_iterated_gives_its_slot_back_once(
    served_cp: str, cp: ControlPlane, agents: Agents
) -> None:
    (n1,) = agents("n1")
    deploy(cp, [n1], "web", 1)
    stream = cp.logstreams.open("web", LogQuery(follow=True))  # as a caller gone before a write
    assert cp.logstreams.open_now() == 1
    stream.close()
    stream.close()
    assert cp.logstreams.open_now() == 0
    asked = n1.next_frame(kind="logs")
    assert n1.next_frame(kind="logs_stop") == {"type": "logs_stop", "stream": asked["stream"]}
    assert cp.logstreams._per_node == {}  # the node's count given back too, once


def test_a_busy_stream_is_written_a_few_times_a_second_not_once_a_batch() -> None:
    """Each write wakes a CP thread, a turn at the GIL heartbeats share: lines coming in
    40 batches a second reach the caller in order, in one write every LOG_WRITE_EVERY."""
    source = Source("n1", "web-1", 1, "web.1@n1")
    relay = Relay("s1", [source], follow=True)
    sent = 0

    def feed() -> None:
        nonlocal sent
        for _ in range(40):
            lines = [LogLine(label=source.label, text=f"line {sent + i}") for i in range(5)]
            relay.add("n1", LogBatch(lines=lines))
            sent += 5
            time.sleep(0.025)

    feeder = threading.Thread(target=feed)
    feeder.start()
    writes, texts = 0, []
    while feeder.is_alive() or relay.items:
        out, _ = relay.take(time.monotonic() + 2)
        if out:
            writes += 1
            texts += [
                json.loads(e[len("data: ") :])["text"] for e in out.decode().split("\n\n") if e
            ]
    assert texts == [f"line {i}" for i in range(200)]
    seconds = 40 * 0.025
    assert writes <= seconds / defaults.LOG_WRITE_EVERY + 3, writes  # not 40


def test_a_buffer_half_full_is_written_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Coalescing never costs lines: half the buffer waiting is written without waiting."""
    monkeypatch.setattr(defaults, "LOG_WRITE_EVERY", 60.0)
    source = Source("n1", "web-1", 1, "web.1@n1")
    relay = Relay("s1", [source], follow=True)
    few = [LogLine(label=source.label, text="a") for _ in range(10)]
    relay.add("n1", LogBatch(lines=few))
    started = time.monotonic()
    out, _ = relay.take(started + 0.3)  # a few lines wait for their time: here, `until`
    assert out.count(b"data: ") == 10 and time.monotonic() - started >= 0.29
    many = [LogLine(label=source.label, text="b") for _ in range(defaults.LOG_BUFFER_LINES // 2)]
    relay.add("n1", LogBatch(lines=few))
    relay.add("n1", LogBatch(lines=many))
    started = time.monotonic()
    out, _ = relay.take(started + 30)
    assert out.count(b"data: ") == 10 + len(many)
    assert time.monotonic() - started < 10  # at once, not at `until` nor LOG_WRITE_EVERY
