"""`docklet logs` as a user runs it, against a served CP and scripted agents (tests/loglab.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from conftest import ADMIN_TOKEN, BIN, silence, wait_for
from loglab import ScriptedAgent, deploy, put_app

from docklet.cp.service.controlplane import ControlPlane


def docklet(url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "docklet"), "--cp", url, "logs", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DOCKLET_TOKEN": ADMIN_TOKEN},
    )


@pytest.fixture
def n1(served_cp: str, cp: ControlPlane) -> Iterator[ScriptedAgent]:
    agent = ScriptedAgent(cp, served_cp, "n1")
    agent.keep_beating()
    assert agent.open_channel() == 101
    wait_for(lambda: cp.channels.has(agent.node_id), 5, "n1's channel")
    yield agent
    agent.stop()


def test_each_line_is_printed_with_its_slot_and_node_and_notices_go_to_stderr(
    served_cp: str, cp: ControlPlane, n1: ScriptedAgent
) -> None:
    deploy(cp, [n1], "web", 2)
    command = docklet(served_cp, "web", "--tail", "3", "--timestamps")
    asked = n1.next_frame(timeout=10, kind="logs")
    assert (asked["tail"], asked["timestamps"], asked["follow"]) == (3, True, False)
    stream = asked["stream"]
    n1.call(
        "POST",
        f"logs/{stream}",
        {"lines": [{"label": "web.1@n1", "text": "at noon", "time": 1767268800.5}]},
    )
    n1.send(stream, [("web.2@n1", "hello from 2"), ("web.1@n1", "hello from 1")])
    ended = [
        {"label": "web.1@n1", "reason": "end of logs"},
        {"label": "web.2@n1", "reason": "container exited"},
    ]
    n1.send(stream, [], ended=ended)
    out, err = command.communicate(timeout=20)
    assert command.returncode == 0, err
    assert out.splitlines() == [
        "web.1@n1 | 2026-01-01T12:00:00.500Z at noon",
        "web.2@n1 | hello from 2",
        "web.1@n1 | hello from 1",
    ]
    assert err.splitlines() == ["! web.2@n1: container exited"]


def test_ctrl_c_ends_a_follow_quietly_with_130(
    served_cp: str, cp: ControlPlane, n1: ScriptedAgent
) -> None:
    deploy(cp, [n1], "web", 1)
    command = docklet(served_cp, "web", "-f")
    stream = n1.next_frame(timeout=10, kind="logs")["stream"]
    n1.send(stream, [("web.1@n1", "first")])
    assert command.stdout is not None
    assert command.stdout.readline() == "web.1@n1 | first\n"
    command.send_signal(signal.SIGINT)
    _, err = command.communicate(timeout=10)
    assert command.returncode == 130
    assert err == ""
    assert n1.next_frame(timeout=5, kind="logs_stop")["stream"] == stream  # the agent stops


@pytest.mark.parametrize(
    ("app", "args", "code", "words"),
    [
        ("nope", (), 4, "404: app 'nope' does not exist"),
        ("empty", (), 7, "404: app 'empty' has no containers"),
        ("web", ("--slot", "9"), 7, "404: app 'web' has no containers slot 9"),
        ("web", (), 8, "503: node n1 is offline (last seen"),
        ("web", ("--revision", "3x"), 4, "400: query parameter 'revision'"),
    ],
)
def test_what_cannot_be_shown_has_its_own_exit_code_and_one_line(
    served_cp: str,
    cp: ControlPlane,
    n1: ScriptedAgent,
    app: str,
    args: tuple[str, ...],
    code: int,
    words: str,
) -> None:
    put_app(cp, "empty", replicas=1, placement={"nodes": ["elsewhere"]})
    put_app(cp, "web", replicas=1, placement={"nodes": [n1.node_id]})
    n1.run("web", 1, 1)
    if code == 8:
        n1.stop()
        cp.liveness.started_at = time.time() - 7200
        silence(cp, n1.node_id, time.time() - 3600)
    command = docklet(served_cp, app, *args)
    out, err = command.communicate(timeout=20)
    assert (command.returncode, out) == (code, "")
    assert len(err.splitlines()) == 1 and err.startswith(f"✖ {words}"), err
