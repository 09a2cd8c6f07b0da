"""`--log-format json`: one JSON object a line, with what each line is about.

The lines are captured through the handler the entry points install
(`logs.setup`), over a rollout driven through the API by agents speaking
the agent API, and from a real `docklet-cp` process.
"""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, Process, WSGIClient, free_port, wait_for

from docklet.agent.loop import Agent
from docklet.agent.settings import AgentConfig
from docklet.common import logs
from docklet.common.errors import TaskFailed
from docklet.cp.http.api import make_app
from docklet.cp.service.controlplane import ControlPlane
from docklet.wire.protocol import LeasedTask

log = logging.getLogger("docklet.test")
TOKEN = "dku_" + "s3cr3t" * 5


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """What the CP's own handler writes with --log-format json, restored afterwards."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.setup("INFO", "json", stream)
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line written, parsed: a line that is not one JSON object fails the test."""
    parsed = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all(isinstance(p, dict) for p in parsed)
    return parsed


# -- the format itself -------------------------------------------------------------------


def test_a_line_is_one_object_with_its_context(captured: io.StringIO) -> None:
    with logs.context(app="web", revision=3, rollout=7):
        with logs.context(node="n-1", task=42):
            log.warning("task %s: two\nlines", 42)
        log.info("after the task")
    log.info("outside")
    inner, after, outside = lines(captured)
    assert inner["message"] == "task 42: two\nlines"  # one line on the stream, still
    assert (inner["level"], inner["logger"]) == ("WARNING", "docklet.test")
    assert inner["time"].endswith("+00:00") and "T" in inner["time"]
    assert {k: inner[k] for k in ("app", "revision", "rollout", "node", "task")} == {
        "app": "web",
        "revision": 3,
        "rollout": 7,
        "node": "n-1",
        "task": 42,
    }
    assert (after["app"], "task" in after) == ("web", False)
    assert set(outside) == {"time", "level", "logger", "message"}


def test_a_field_passed_with_the_call_wins_and_unknown_fields_are_refused(
    captured: io.StringIO,
) -> None:
    with logs.context(app="web"):
        log.info("elsewhere", extra={"app": "api", "task": 5})
    (line,) = lines(captured)
    assert (line["app"], line["task"]) == ("api", 5)
    with pytest.raises(ValueError, match="not a log context field: ap"):
        logs.bind(ap="typo")


def test_tokens_are_redacted_in_the_message_the_fields_and_the_traceback(
    captured: io.StringIO,
) -> None:
    with logs.context(request_id=TOKEN, app="web"):
        log.info("joined with %s and Authorization: Bearer abcdefgh12345", TOKEN)
        try:
            raise RuntimeError(f"refused {TOKEN}")
        except RuntimeError:
            log.exception('reply {"token": "abcdefgh123"}')
    said, failed = lines(captured)
    assert TOKEN not in captured.getvalue() and "abcdefgh12345" not in captured.getvalue()
    assert "abcdefgh123" not in captured.getvalue()
    assert said["message"] == "joined with [redacted] and Authorization: Bearer [redacted]"
    assert said["request_id"] == "[redacted]" and said["app"] == "web"
    assert "RuntimeError: refused [redacted]" in failed["exception"]


def test_text_lines_carry_the_context_after_the_message() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup("INFO", "text", stream)
        with logs.context(app="web", request_id="abc-1"):
            log.info("deploying with %s", TOKEN)
        log.info("plain")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    first, second = stream.getvalue().splitlines()
    assert first.endswith("INFO docklet.test: deploying with [redacted] [app=web request_id=abc-1]")
    assert second.endswith("INFO docklet.test: plain")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text or json"):
        logs.handler("yaml")


# -- over a rollout ------------------------------------------------------------------------


class APIAgent:
    """A node's agent speaking the agent API (register, heartbeat, poll, report) through
    WSGI, with the containers it runs kept in a dict."""

    def __init__(self, cp: ControlPlane, api: WSGIClient, name: str) -> None:
        self.cp, self.api = cp, api
        status, reply = api.post(
            "/api/agents/register", {"engine_id": f"engine-{name}", "name": name}
        )
        assert status == 200, reply
        self.node_id, self.auth = reply["node_id"], {"Authorization": f"Bearer {reply['token']}"}
        self.containers: dict[str, dict[str, Any]] = {}
        self.seq = 0

    def step(self) -> None:
        """Carry out this node's tasks, report them, send a heartbeat; then a CP pass."""
        status, answer = self.api.get(
            f"/api/agents/{self.node_id}/tasks?max=100", headers=self.auth
        )
        assert status == 200, answer
        for task in answer["tasks"]:
            self.seq += 1
            container = self._run(task)
            report = {"status": "done", "lease_token": task["lease_token"], "seq": self.seq}
            report.update(container=container, container_id=container and container["id"])
            path = f"/api/agents/{self.node_id}/tasks/{task['id']}"
            assert self.api.post(path, report, headers=self.auth)[0] == 200
        beat = {"report_seq": self.seq, "containers": list(self.containers.values())}
        assert (
            self.api.post(f"/api/agents/{self.node_id}/heartbeat", beat, headers=self.auth)[0]
            == 200
        )
        self.cp.passes.reconcile()

    def _run(self, task: dict[str, Any]) -> dict[str, Any] | None:
        name = task["container"]
        if task["kind"] == "remove":
            self.containers.pop(name, None)
            return None
        if task["kind"] == "stop":
            self.containers[name] = {**self.containers[name], "state": "exited", "exit_code": 0}
            return self.containers[name]
        labels = {
            "docklet.cluster": self.cp.cluster_id,
            "docklet.app": task["app"],
            "docklet.slot": str(task["slot"]),
            "docklet.revision": str(task["revision"]),
            "docklet.spec-hash": task["payload"]["container_hash"],
            "docklet.node": self.node_id,
        }
        self.containers[name] = {
            "id": f"{name}-t{task['id']}",
            "name": name,
            "image": task["payload"]["image"],
            "state": "running",
            "health": None,
            "exit_code": None,
            "restarts": 0,
            "labels": labels,
        }
        return self.containers[name]


def test_every_line_of_a_rollout_is_json_with_what_it_is_about(
    cp: ControlPlane, captured: io.StringIO
) -> None:
    api = WSGIClient(make_app(cp), join_token=cp.tokens.join_token())
    agent = APIAgent(cp, api, "a")
    fast = {"min_healthy_time": "0s"}
    created = {"name": "web", "image": "nginx:1.25", "replicas": 2, "rollout": fast}
    assert api.post("/api/apps", created, headers={"X-Request-Id": "create-1"})[0] == 201
    for _ in range(3):
        agent.step()
    update = {"image": "nginx:1.27"}
    assert api.post("/api/apps/web/update", update, headers={"X-Request-Id": "update-1"})[0] == 200
    for _ in range(6):
        agent.step()
    assert cp.views.app("web")["status"] == "stable" and cp.views.app("web")["revision"] == "v2"

    written = lines(captured)
    assert len(written) > 10
    assert all({"time", "level", "logger", "message"} <= set(line) for line in written)
    # What the update caused, in its request: the commit, the sync, the first rollout step.
    caused = [line for line in written if line.get("request_id") == "update-1"]
    assert caused and all(line["app"] == "web" for line in caused)
    assert any("rollout" in line["message"] and line.get("rollout") for line in caused)
    # Every step of the rollout names its app, rollout and revision, whoever took it.
    steps = [line for line in written if line["message"].startswith("rollout: app web: rollout 1 ")]
    assert len(steps) >= 3, [line["message"] for line in written]
    assert all((s["app"], s["rollout"], s["revision"]) == ("web", 1, 2) for s in steps)
    # Every line about a task names it, its app and its node; an agent's report, the
    # request that carried it (an id the CP made: the agent sent none).
    about_tasks = [line for line in written if line["message"].startswith("task_")]
    assert len(about_tasks) == 24  # 8 tasks, each created, leased and done
    for line in about_tasks:
        assert line["message"].split()[1:3] == ["task", f"{line['task']}:"]
        assert (line["app"], line["node"]) == ("web", agent.node_id)
    done = [line for line in about_tasks if line["message"].startswith("task_done")]
    assert len({line["request_id"] for line in done}) == 8
    assert all(re.fullmatch("[0-9a-f]{32}", line["request_id"]) for line in done)


# -- the processes -------------------------------------------------------------------------


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:  # not up yet
        return False


def test_docklet_cp_with_log_format_json_writes_json_lines(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--data-dir", str(tmp_path / "cp"), "--host", "127.0.0.1", "--port", str(port)]
    server = Process([str(BIN / "docklet-cp"), *args, "--log-format", "json"], tmp_path / "cp.log")
    server.start()
    try:
        wait_for(lambda: _health(url), 20, "docklet-cp to answer")
        wrong = urllib.request.Request(
            f"{url}/api/state/apps",
            headers={"Authorization": f"Bearer {TOKEN}", "X-Request-Id": "probe-7"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(wrong, timeout=5)
        assert refused.value.code == 401 and refused.value.headers["X-Request-Id"] == "probe-7"
    finally:
        server.stop()
    text = (tmp_path / "cp.log").read_text()
    written = [json.loads(line) for line in text.splitlines()]
    assert any("listening on" in line["message"] for line in written)
    (auth,) = [line for line in written if line["message"].startswith("auth:")]
    assert (auth["level"], auth["request_id"]) == ("WARNING", "probe-7")
    assert TOKEN not in text


def test_a_bad_log_format_is_a_usage_error(tmp_path: Path) -> None:
    made = subprocess.run(
        [str(BIN / "docklet-cp"), "--data-dir", str(tmp_path), "--log-format", "xml"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 2 and "--log-format" in made.stderr, made.stderr
    assert "Traceback" not in made.stderr


class RefusingEngine:
    """Docker saying no to every deploy (the agent's side of a failed canary)."""

    def deploy(self, task: LeasedTask, node_id: str, cluster_id: str) -> None:
        raise TaskFailed(f"pull {task.payload.image if task.payload else '?'}: manifest unknown")


def test_an_agents_task_lines_name_the_task_its_app_revision_and_node(
    served_cp: str, captured: io.StringIO
) -> None:
    agent = Agent(AgentConfig(cp=served_cp, retry_max=0.1), engine=RefusingEngine())  # type: ignore[arg-type]
    agent.node_id = "node-b"  # a node the CP does not know: its report is refused, and said
    task = LeasedTask.model_validate(
        {
            "id": 9,
            "kind": "deploy",
            "app": "web",
            "container": "docklet.web.1.h2",
            "slot": 1,
            "revision": 3,
            "payload": {"image": "nginx:nope", "container_hash": "h2"},
            "lease_token": "lease",
            "lease_seconds": 5,
        }
    )
    assert agent.run_task(task) is True
    mine = [line for line in lines(captured) if line["logger"] == "docklet.agent.loop"]
    said = [line["message"] for line in mine]
    assert said[0].startswith("task 9: deploy") and "manifest unknown" in said[1], said
    assert "report refused" in said[-1]
    for line in mine:
        assert {k: line[k] for k in ("node", "app", "task", "revision")} == {
            "node": "node-b",
            "app": "web",
            "task": 9,
            "revision": 3,
        }
    logging.getLogger("docklet.agent.loop").info("after the task")
    assert "task" not in lines(captured)[-1]
