"""Scale: bounded long-polls, one poll per node, tasks_waiting, 503 under overload."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from conftest import WSGIClient, wait_for
from test_tasks import queue_deploy, register_node

from docklet.agent.loop import Agent
from docklet.agent.settings import AgentConfig
from docklet.cp.controller import Controller
from docklet.cp.server import Overload
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.settings import CPConfig


def _poll_in_thread(cp: ControlPlane, node: str, token: str, wait: float) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        out["tasks"] = cp.agents.lease_tasks(node, token, wait)
        out["took"] = time.monotonic() - started

    out["thread"] = threading.Thread(target=run, daemon=True)
    out["thread"].start()
    return out


def test_a_second_poll_from_a_node_makes_the_first_answer_at_once(cp: ControlPlane) -> None:
    node, token = register_node(cp, "n1")
    first = _poll_in_thread(cp, node, token, 20)
    wait_for(lambda: cp.views.metrics()["long_polls"] == 1, 5, "the first poll to wait")
    second = _poll_in_thread(cp, node, token, 20)
    first["thread"].join(timeout=5)
    assert first["tasks"] == [] and first["took"] < 3  # replaced, not left to time out
    wait_for(lambda: cp.views.metrics()["long_polls"] == 1, 5, "the second poll to wait")
    task_id = queue_deploy(cp, node)
    cp.polls.wake()  # what a reconcile pass that queued work does
    second["thread"].join(timeout=5)
    assert [t["id"] for t in second["tasks"]] == [task_id]  # the newer poll gets the work
    assert cp.views.metrics()["long_polls"] == 0


def test_polls_beyond_the_slots_answer_at_once_with_what_is_there(cp: ControlPlane) -> None:
    cp.polls.limit(2)
    waiting = [_poll_in_thread(cp, *register_node(cp, f"n{i}"), 20) for i in range(2)]
    wait_for(lambda: cp.views.metrics()["long_polls"] == 2, 5, "two polls to wait")
    node, token = register_node(cp, "late")
    started = time.monotonic()
    assert cp.agents.lease_tasks(node, token, 20) == []  # no slot: an empty answer, at once
    assert time.monotonic() - started < 2
    task_id = queue_deploy(cp, node)
    leased = cp.agents.lease_tasks(node, token, 20)
    assert [t["id"] for t in leased] == [task_id]  # waiting work: at once
    for i in range(len(waiting)):
        queue_deploy(cp, f"n{i}")
    cp.polls.wake()
    for poll in waiting:
        poll["thread"].join(timeout=5)
        assert len(poll["tasks"]) == 1


def _get(url: str, timeout: float) -> tuple[int, Any, float]:
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return answer.status, json.loads(answer.read()), time.monotonic() - started


def test_long_polls_from_many_nodes_and_one_node_never_starve_health(
    served_cp: str, cp: ControlPlane
) -> None:
    # served_cp has 16 threads: 8 kept for everything else; of the other 8, 2 for event
    # streams, 2 for log streams and 4 long-poll slots.
    assert (cp.config.long_poll_slots, cp.config.event_stream_slots) == (4, 2)
    agents = [register_node(cp, f"n{i}") for i in range(20)] + [register_node(cp, "busy")] * 20

    def poll(agent: tuple[str, str]) -> Any:
        node, token = agent
        request = urllib.request.Request(
            f"{served_cp}/api/agents/{node}/tasks?wait=20",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    with ThreadPoolExecutor(len(agents)) as pool:
        polls = [pool.submit(poll, a) for a in agents]
        wait_for(lambda: cp.views.metrics()["long_polls"] >= 4, 10, "the slots to fill")
        for _ in range(20):
            status, answer, took = _get(f"{served_cp}/api/health", 5)
            assert (status, answer) == (200, {"status": "ok"}) and took < 1.0
            assert cp.views.metrics()["long_polls"] <= 4
        # Polls that found no slot, and the busy node's replaced polls, answered already;
        # those without a slot tell their agent to leave long-polling to others a while.
        answered = [p for p in polls if p.done()]
        assert len(answered) >= len(agents) - 6
        assert all(p.result()["tasks"] == [] for p in answered)
        slotless = [p for p in answered if "poll_after" in p.result()]
        assert slotless and all(p.result()["poll_after"] == 30 for p in slotless)
        for node in {node for node, _ in agents}:
            queue_deploy(cp, node)
        cp.polls.wake()
        assert all(p.result(timeout=10)["tasks"] or p in answered for p in polls)


def test_the_heartbeat_answer_says_whether_tasks_wait(cp: ControlPlane) -> None:
    from docklet.cp.http.api import make_app

    node, token = register_node(cp, "n1")
    api = WSGIClient(make_app(cp), token=token)
    beat = {"containers": [], "report_seq": 0}
    assert api.post(f"/api/agents/{node}/heartbeat", beat) == (
        200,
        {"status": "ok", "tasks_waiting": False},
    )
    queue_deploy(cp, node)
    assert api.post(f"/api/agents/{node}/heartbeat", beat)[1]["tasks_waiting"] is True


def test_the_cp_answers_503_with_retry_after_while_requests_pile_up() -> None:
    queued = [0]
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    overload = Overload(app, lambda: queued[0], limit=2.0)
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen.update(status=status, headers=dict(headers))

    assert overload({"PATH_INFO": "/api/state/apps"}, start_response) == [b"{}"]
    assert seen["status"] == "200 OK"
    queued[0] = 2.5  # the oldest request has waited for a thread longer than the CP lets it
    (body,) = overload({"PATH_INFO": "/api/state/apps"}, start_response)
    assert seen["status"].startswith("503")
    assert seen["headers"]["Retry-After"] == "1"
    assert json.loads(body) == {
        "error": {
            "code": "overloaded",
            "message": "the control plane is overloaded; retry after a moment",
            "status": 503,
        }
    }
    assert calls == ["/api/state/apps"]  # the refused request cost the API nothing
    assert overload.refused == 1 and overload.refused_at > time.time() - 5


def test_the_server_watches_how_long_requests_wait_for_a_thread(cp: ControlPlane) -> None:
    from docklet.cp.server import Server

    cp.config = CPConfig(
        **{**dict(cp.config), "host": "127.0.0.1", "port": 0, "threads": 4, "overload_wait": 30}
    )
    server = Server(cp)
    api, release = server.app.app, threading.Event()

    def busy(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/busy":  # a request that holds its worker
            release.wait(10)
        return api(environ, start_response)

    server.app.app = busy
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        assert server.waited() == 0
        with ThreadPoolExecutor(5) as pool:
            holding = [pool.submit(_status, f"{url}/busy") for _ in range(4)]
            time.sleep(0.5)  # every worker taken
            health = pool.submit(_get, f"{url}/api/health", 10)
            wait_for(lambda: server.waited() > 1.0, 5, "the health check to wait for a worker")
            assert server.waited() < 5
            release.set()
            assert health.result(timeout=10)[:2] == (200, {"status": "ok"})
            assert [h.result(timeout=10) for h in holding] == [404] * 4
        assert server.waited() == 0 and cp.views.metrics()["overloaded"] == 0
    finally:
        server.stop()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


class _FakeCP:
    """Answers polls at once and empty (no long-poll slot free), as a busy CP does."""

    def __init__(self) -> None:
        self.paths: list[tuple[float, str]] = []
        self.base_url = "http://fake"
        self.timeout = 1.0
        self.token = "t"

    def get(self, path: str, timeout: float | None = None) -> Any:
        self.paths.append((time.monotonic(), path))
        return {"tasks": []}


class _FakeEngine:
    def ping(self) -> None:
        pass


def _polling(fake: _FakeCP, tmp_path: Path, heartbeat_interval: float) -> tuple[Agent, Any]:
    """An agent whose task loop (two polls) runs against `fake`, started."""
    config = AgentConfig(
        cp="http://fake", poll_wait=10, heartbeat_interval=heartbeat_interval, state_dir=tmp_path
    )
    agent = Agent(config, engine=_FakeEngine())  # type: ignore[arg-type]
    agent.cp = fake  # type: ignore[assignment]
    agent.node_id = "n1"
    loop = threading.Thread(target=agent.task_loop, kwargs={"max_iterations": 2}, daemon=True)
    loop.start()
    return agent, loop


def test_an_agent_pauses_after_an_early_empty_poll_and_asks_at_once_when_told(
    tmp_path: Path,
) -> None:
    fake = _FakeCP()
    agent, loop = _polling(fake, tmp_path, heartbeat_interval=2)
    wait_for(lambda: len(fake.paths) == 1, 5, "the first poll")
    time.sleep(0.3)
    assert len(fake.paths) == 1  # not spinning: it waits up to a heartbeat interval
    agent.tasks_waiting.set()  # what a heartbeat answering tasks_waiting: true does
    loop.join(timeout=5)
    assert [p for _, p in fake.paths] == [
        "/api/agents/n1/tasks?wait=10&max=32",
        "/api/agents/n1/tasks?wait=0&max=32",  # at once, without waiting for a slot
    ]
    assert fake.paths[1][0] - fake.paths[0][0] < 1.0
    agent._pool.shutdown()


# -- heartbeats cost what changed --------------------------------------------------


def _containers(n: int, state: str = "running") -> list[dict[str, Any]]:
    return [
        {
            "id": f"{i:064d}",
            "name": f"docklet.web.{i}",
            "image": "nginx:1.25",
            "state": state,
            "labels": {"docklet.app": "web", "docklet.slot": str(i)},
        }
        for i in range(n)
    ]


def _writes(cp: ControlPlane, call: Any) -> list[str]:
    """The statements `call` runs on the writer connection (the only one that writes)."""
    statements: list[str] = []
    cp.store._writer.set_trace_callback(statements.append)
    try:
        call()
    finally:
        cp.store._writer.set_trace_callback(None)
    return statements


def test_an_unchanged_heartbeat_writes_nothing_and_a_changed_one_writes(
    cp: ControlPlane,
) -> None:
    from docklet.wire.protocol import Heartbeat

    node, _ = register_node(cp, "n1")
    same = Heartbeat.model_validate({"containers": _containers(10)})
    assert _writes(cp, lambda: cp.agents.heartbeat(node, same))  # new containers: recorded
    assert _writes(cp, lambda: cp.agents.heartbeat(node, same)) == []  # only "still here"
    cp.agents.heartbeat(node, same)
    exited = Heartbeat.model_validate({"containers": _containers(10, "exited")})
    assert any("containers" in s for s in _writes(cp, lambda: cp.agents.heartbeat(node, exited)))
    down = Heartbeat.model_validate({"docker_ok": False, "docker_error": "no answer"})
    assert _writes(cp, lambda: cp.agents.heartbeat(node, down))  # Docker's state changed: written
    assert _writes(cp, lambda: cp.agents.heartbeat(node, down)) == []


def test_heartbeat_times_are_flushed_in_one_write_and_read_from_memory(
    cp: ControlPlane,
) -> None:
    from docklet.wire.protocol import Heartbeat

    beat = Heartbeat.model_validate({"containers": []})
    names = [register_node(cp, f"n{i}")[0] for i in range(50)]
    for node in names:
        cp.agents.heartbeat(node, beat)
    long_ago = time.time() - 3600
    with cp.store.write() as db:  # the stored times are old: only memory knows better
        db.execute("UPDATE nodes SET last_seen = ?", (long_ago,))
    before = time.time()
    for node in names:
        cp.agents.heartbeat(node, beat)
    # Liveness and the node views read the memory: nobody is marked unknown.
    cp.liveness.started_at = long_ago  # no grace from the CP's start either
    cp.passes.reconcile()
    assert {n["status"] for n in cp.views.nodes()} == {"online"}
    assert all(n["last_seen"] >= before for n in cp.views.nodes())
    assert {r["status"] for r in cp.store.query("SELECT status FROM nodes")} == {"online"}
    # One flush writes them all, in one transaction of one statement (one step: a row
    # a step was a wait for the GIL each, under load).
    verbs = [s.split()[0].upper() for s in _writes(cp, cp.liveness.flush_seen)]
    assert verbs == ["BEGIN", "UPDATE", "COMMIT"]
    stored = cp.store.query("SELECT node_id, last_seen FROM nodes")
    assert all(r["last_seen"] >= before for r in stored)
    assert {r["node_id"] for r in stored} == set(names)
    # Never moved back: a time older than the stored one is not written over it.
    from docklet.cp.store import nodes

    with cp.store.write() as db:
        nodes.flush_seen(db, {names[0]: long_ago})
    (first,) = cp.store.query("SELECT last_seen FROM nodes WHERE node_id = ?", (names[0],))
    assert first["last_seen"] >= before
    assert cp.liveness.flush_seen() == 0  # nothing new since


def test_the_controller_loop_flushes_heartbeat_times_every_second(cp: ControlPlane) -> None:
    from docklet.wire.protocol import Heartbeat

    node, _ = register_node(cp, "n1")
    beat = Heartbeat.model_validate({"containers": []})
    cp.agents.heartbeat(node, beat)
    with cp.store.write() as db:
        db.execute("UPDATE nodes SET last_seen = 0")
    cp.agents.heartbeat(node, beat)
    stop = threading.Event()
    loop = threading.Thread(target=Controller(cp).run, args=(stop,), daemon=True)
    loop.start()
    try:
        wait_for(
            lambda: cp.store.one("SELECT last_seen FROM nodes")["last_seen"] > 0,  # type: ignore[index]
            3,
            "the flush",
        )
    finally:
        stop.set()
        cp.changes.wake()
        loop.join(timeout=5)


def test_the_app_list_is_rebuilt_only_when_what_it_shows_changed(cp: ControlPlane) -> None:
    from docklet.wire.protocol import Heartbeat

    cp.config = CPConfig(**{**dict(cp.config), "heartbeat_interval": 0.2})  # unknown after 0.6 s
    node, _ = register_node(cp, "n1")
    cp.agents.heartbeat(node, Heartbeat(containers=[]))
    cp.apps.create({"name": "web", "image": "nginx:1.25"}, "alice")
    first = cp.views.apps(brief=True)
    assert cp.views.apps(brief=True) is first  # nothing changed: the same list, not rebuilt
    cp.agents.heartbeat(node, Heartbeat(containers=[]))
    cp.liveness.flush_seen()  # heartbeat times: written, but nothing the list shows
    assert cp.views.apps(brief=True) is first
    cp.apps.create({"name": "api", "image": "nginx:1.25"}, "alice")  # a write: seen at once
    assert [a["name"] for a in cp.views.apps(brief=True)] == ["api", "web"]
    listed = cp.views.apps(brief=True)
    assert listed[1]["nodes"] == [node]
    time.sleep(0.8)  # the node goes silent: no write, but its status changed
    assert (
        cp.views.apps(brief=True) is not listed
        and cp.views.apps(brief=True)[1]["actual"] == "unknown"
    )


class _SlotlessCP(_FakeCP):
    def get(self, path: str, timeout: float | None = None) -> Any:
        self.paths.append((time.monotonic(), path))
        return {"tasks": [], "poll_after": 1}  # no long-poll slot: come back in about 1 s


def test_an_agent_told_no_slot_leaves_long_polling_to_others_for_a_while(
    tmp_path: Path,
) -> None:
    fake = _SlotlessCP()
    agent, loop = _polling(fake, tmp_path, heartbeat_interval=0.1)
    loop.join(timeout=5)
    (first, _), (second, _) = fake.paths
    # Not after a heartbeat interval (0.1 s), but after what the CP said, jittered (0.5-1 s).
    assert 0.45 <= second - first <= 1.5
    agent._pool.shutdown()


def test_a_report_refused_with_503_is_sent_again_not_lost(
    served_cp: str, cp: ControlPlane, tmp_path: Path
) -> None:
    from docklet.common.status import TaskStatus
    from docklet.wire.protocol import LeasedTask

    node, token = register_node(cp, "n1")
    task_id = queue_deploy(cp, node)
    (leased,) = cp.agents.lease_tasks(node, token, 0)
    config = AgentConfig(cp=served_cp, state_dir=tmp_path, retry_max=0.5)
    agent = Agent(config, engine=_FakeEngine())  # type: ignore[arg-type]
    agent.node_id, agent.cp.token = node, token
    overload = cp.liveness.overload
    limit, overload.limit = overload.limit, -1.0  # every request waits "too long": 503s
    report = threading.Thread(
        target=agent._report, args=(LeasedTask(**leased), TaskStatus.DONE), daemon=True
    )
    report.start()
    wait_for(lambda: overload.refused >= 2, 5, "the report to be refused, and tried again")
    assert cp.store.one("SELECT status FROM tasks WHERE id = ?", (task_id,))["status"] == "running"
    overload.limit = limit  # the CP has time again
    report.join(timeout=10)
    assert not report.is_alive()
    assert cp.store.one("SELECT status FROM tasks WHERE id = ?", (task_id,))["status"] == "done"
    agent._pool.shutdown()
