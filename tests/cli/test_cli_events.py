"""`docklet events` (listed, --since, -f following across reconnects) and `docklet completion`,
against a real control plane on loopback."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from clilab import ROOT, invoke
from conftest import ADMIN_TOKEN

from docklet.cli.base import ExitCode
from docklet.common.status import EventKind
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.store import events
from docklet.wire.client import Client


@pytest.fixture(autouse=True)
def quick_keepalive(cp: ControlPlane) -> None:
    cp.streams.keepalive = 0.2  # a closed stream is noticed at once: the server stops quickly


def record(cp: ControlPlane, message: str, app: str | None = None) -> int:
    with cp.store.write() as db:
        events.record(db, EventKind.APP_DESIRED, message, app=app)
    return events.newest_id(cp.store)


def docklet_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "DOCKLET_TOKEN": ADMIN_TOKEN, **extra}


class Following:
    """`docklet events -f …` running as a process; its stdout lines as they come."""

    def __init__(self, url: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "docklet", "--cp", url, "events", "-f", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=docklet_env(),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def next(self, timeout: float = 10) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no line from `docklet events -f` in {timeout}s")

    def stop(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=10)
        return err


def test_events_lists_the_newest_and_json_parses(served_cp: str, cp: ControlPlane) -> None:
    for i in range(5):
        record(cp, f"step {i}", app="web" if i % 2 else "db")
    code, out, _ = invoke(served_cp, "events", "-n", "3")
    assert code == ExitCode.OK
    lines = out.splitlines()
    assert [line.split()[-1] for line in lines] == ["2", "3", "4"]
    assert "app_desired" in lines[0] and "web" in lines[1]
    code, out, _ = invoke(served_cp, "events", "--app", "web", "--json")
    parsed = [json.loads(line) for line in out.splitlines()]
    assert code == ExitCode.OK and [e["message"] for e in parsed] == ["step 1", "step 3"]
    assert all(e["app"] == "web" and isinstance(e["id"], int) for e in parsed)


def test_since_an_id_or_a_duration(served_cp: str, cp: ControlPlane) -> None:
    first = record(cp, "one", app="web")
    record(cp, "two", app="web")
    code, out, _ = invoke(served_cp, "events", "--since", str(first), "--json")
    assert code == ExitCode.OK and [json.loads(x)["message"] for x in out.splitlines()] == ["two"]
    code, out, _ = invoke(served_cp, "events", "--since", "5m", "--app", "web", "--json")
    assert [json.loads(x)["message"] for x in out.splitlines()] == ["one", "two"]
    code, _, err = invoke(served_cp, "events", "--since", "last tuesday")
    assert code == ExitCode.CLIENT_ERROR
    assert "400: query parameter 'since' is an event id (e.g. 1234) or a duration" in err


def test_follow_prints_each_event_once_across_reconnects(served_cp: str, cp: ControlPlane) -> None:
    cp.config = cp.config.model_copy(update={"event_stream_time": 1.0})  # reconnect each second
    record(cp, "old 1", app="web")
    record(cp, "old 2", app="web")
    follow = Following(served_cp, "--app", "web", "--json", "-n", "1")
    try:
        assert json.loads(follow.next())["message"] == "old 2"  # the context: -n 1
        sent = []
        for i in range(8):
            record(cp, f"other {i}", app="db")
            sent.append(f"new {i}")
            record(cp, sent[-1], app="web")
            time.sleep(0.3)  # so that streams end, and reconnect, between them
        got = [json.loads(follow.next())["message"] for _ in sent]
        assert got == sent
        assert follow.lines.empty()
    finally:
        err = follow.stop()
    assert "Traceback" not in err


def test_follow_shows_lines_for_people_as_they_happen(served_cp: str, cp: ControlPlane) -> None:
    follow = Following(served_cp, "-n", "1")
    try:
        assert "token 'test-admin' (admin) created" in follow.next()  # the context: -n 1
        time.sleep(0.5)
        started = time.monotonic()
        record(cp, "deploy of web is under way", app="web")
        line = follow.next()
        took = time.monotonic() - started
    finally:
        follow.stop()
    assert line.endswith("deploy of web is under way") and "web" in line
    assert took < 1.0


def test_follow_refused_exits_with_the_cps_error(served_cp: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "docklet", "--cp", served_cp, "events", "-f", "--since", "x"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=docklet_env(),
        timeout=30,
    )
    assert result.returncode == ExitCode.CLIENT_ERROR
    assert result.stderr.startswith("✖ 400: query parameter 'since'")


def complete(url: str, words: str, cword: int) -> subprocess.CompletedProcess[str]:
    env = docklet_env(_DOCKLET_COMPLETE="bash_complete", COMP_WORDS=words, COMP_CWORD=str(cword))
    return subprocess.run(
        [str(Path(sys.executable).parent / "docklet")],  # the installed command: its name
        # is what click's completion scripts ask by (_DOCKLET_COMPLETE)
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=30,
    )


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_clicks_script(shell: str) -> None:
    code, out, _ = invoke("http://localhost:8080", "completion", shell)
    assert code == ExitCode.OK and "_DOCKLET_COMPLETE" in out and "docklet" in out


def test_completion_of_an_unknown_shell_is_a_usage_error() -> None:
    code, _, err = invoke("http://localhost:8080", "completion", "tcsh")
    assert code == ExitCode.USAGE and "'tcsh' is not one of" in err


def test_app_names_complete_from_the_cp_and_never_fail_the_shell(served_cp: str) -> None:
    admin = Client(served_cp, token=ADMIN_TOKEN)
    for name in ("web", "worker", "db"):
        admin.post("/api/apps", {"image": "nginx:1.25", "name": name})
    done = complete(served_cp, f"docklet --cp {served_cp} stop w", 4)
    assert done.returncode == 0 and done.stdout.split() == ["plain,web", "plain,worker"]
    done = complete(served_cp, f"docklet --cp {served_cp} events --app d", 5)
    assert done.stdout.split() == ["plain,db"]
    done = complete(served_cp, f"docklet --cp {served_cp} ev", 3)
    assert done.stdout.split() == ["plain,events"]
    started = time.monotonic()
    done = complete("http://10.255.255.1:9", "docklet --cp http://10.255.255.1:9 stop w", 4)
    assert done.returncode == 0 and done.stdout.split() == [] and done.stderr == ""
    assert time.monotonic() - started < 5  # the short timeout, not a hung shell


def test_completion_needs_no_cp_for_commands(served_cp: str) -> None:
    done = complete("http://127.0.0.1:1", "docklet comp", 1)
    assert done.returncode == 0 and done.stdout.split() == ["plain,completion"]
