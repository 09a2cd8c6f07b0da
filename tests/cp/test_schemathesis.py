"""schemathesis holds a live control plane to its own OpenAPI document.

A real `docklet-cp` process on a loopback port, an admin token, a read token and a node's
token: every operation of /api/openapi.json is called with inputs schemathesis makes from
the document (valid and invalid ones), and every answer must be no 5xx, a documented status,
a documented content type and a body its schema accepts. Half the cases name what exists
(the app `web`, the node that joined) so they get past the 404 into the handler's work.
Bounded: a few dozen examples per operation and credential.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from conftest import BIN, Process, WSGIClient, free_port, wait_for
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from docklet.cp.http.api import ROUTES
from docklet.cp.http.openapi import _PARAM
from docklet.wire.client import Client

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Per operation and credential: about 3,700 calls, some 30 s on two cores. DOCKLET_FUZZ_EXAMPLES
# raises it for a deeper run (400: some three minutes).
EXAMPLES = int(os.environ.get("DOCKLET_FUZZ_EXAMPLES", "60"))


class LiveCP:
    """A docklet-cp process, claimed with the bootstrap login, with a read token, an app
    and a node that joined."""

    def __init__(self, tmp: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        args = ["--data-dir", str(tmp / "cp"), "--host", "127.0.0.1", "--port", port]
        args += ["--long-poll-max", "0.05"]  # a node's task poll may ask to wait: not for long
        self.process = Process([str(BIN / "docklet-cp"), *args], tmp / "cp.log")
        self.tokens: dict[str, str] = {}
        self.node_id = ""

    def start(self) -> None:
        self.process.start()
        client = Client(self.url)
        wait_for(lambda: self._healthy(client), 20, "the control plane to answer")
        self.tokens["admin"] = client.post("/api/auth/bootstrap", {"name": "fuzz"})["token"]
        client.token = self.tokens["admin"]
        made = client.post("/api/tokens", {"name": "fuzz-read", "scope": "read"})
        self.tokens["read"] = made["token"]
        client.post("/api/apps", {"image": "busybox:1.36", "name": "web"})  # one to find
        agent = Client(self.url)
        agent.headers["X-Docklet-Join-Token"] = client.post("/api/nodes/join-token", {})["token"]
        joined = agent.post("/api/agents/register", {"engine_id": "fuzz-e1", "name": "fuzz-1"})
        self.node_id, self.tokens["node"] = joined["node_id"], joined["token"]

    def _healthy(self, client: Client) -> bool:
        assert self.process.alive, self.process.log.read_text()[-3000:]
        try:
            return client.get("/api/health") == {"status": "ok"}
        except Exception:  # not up yet
            return False


@pytest.fixture(scope="module")
def live_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCP]:
    cp = LiveCP(tmp_path_factory.mktemp("fuzz"))
    try:
        cp.start()
        yield cp
    finally:
        cp.process.stop()


@pytest.fixture(scope="module")
def api_schema(live_cp: LiveCP) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{live_cp.url}/api/openapi.json")
    schema.config.update(base_url=live_cp.url)
    schema.config.generation.update(with_security_parameters=False)
    return schema


# The operations as the route table lists them: one test each, named by it. (schemathesis's
# own pytest plugin cannot parametrize from a fixture under pytest 9, so each test draws its
# cases from the operation's strategy with hypothesis directly.)
OPERATIONS = [(route.method, _PARAM.sub(r"{\1}", route.path)) for route in ROUTES]
# Each operation with each API token; the agents' with the node's token too.
CALLS = [
    (method, path, scope)
    for method, path in OPERATIONS
    for scope in ("admin", "read", "node")
    if scope != "node" or path.startswith("/api/agents/")
    # The node's own channel is an answer that never ends, by design (the log relay): a
    # fuzzer that reads answers whole would wait forever. Other tokens are refused at once.
    if (method, path, scope) != ("GET", "/api/agents/{node_id}/channel", "node")
]
MODES = list(schemathesis.GenerationMode)  # valid inputs, and invalid ones


def _cases(operation: Any, known: dict[str, Any]) -> st.SearchStrategy[schemathesis.Case]:
    """Valid and invalid cases; half of them with the path naming what exists."""
    pinned = {name: value for name, value in known.items() if f"{{{name}}}" in operation.path}
    strategies = [operation.as_strategy(generation_mode=mode) for mode in MODES]
    if pinned:
        strategies += [
            operation.as_strategy(generation_mode=mode, path_parameters=pinned) for mode in MODES
        ]
    return st.one_of(strategies)


@pytest.mark.parametrize(("method", "path", "scope"), CALLS)
def test_the_api_keeps_its_document(
    api_schema: schemathesis.BaseSchema, live_cp: LiveCP, scope: str, method: str, path: str
) -> None:
    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {live_cp.tokens[scope]}"}
    # A DELETE keeps to made-up names: the fixture's app must outlive the run.
    known = {"name": "web", "node_id": live_cp.node_id} if method != "DELETE" else {}
    cases = _cases(operation, known)

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )
    def holds(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

    holds()


# -- what schemathesis found, kept as plain tests ---------------------------------------


def test_a_report_whose_lease_token_is_not_ascii_is_a_400(cp: Any, api: WSGIClient) -> None:
    """A 500 once: the lease check compared the text with `secrets.compare_digest`, which
    refuses non-ASCII strings. The protocol now says what a lease token is made of."""
    reply = api.post("/api/agents/register", {"engine_id": "engine-a", "name": "a"})[1]
    node, auth = reply["node_id"], {"Authorization": f"Bearer {reply['token']}"}
    assert api.post(f"/api/agents/{node}/heartbeat", {}, headers=auth)[0] == 200
    assert api.post("/api/apps", {"name": "web", "image": "nginx:1.25"})[0] == 201
    cp.passes.reconcile()
    status, batch = api.get(f"/api/agents/{node}/tasks?max=10", headers=auth)
    assert status == 200 and batch["tasks"], batch
    task = batch["tasks"][0]
    path = f"/api/agents/{node}/tasks/{task['id']}"
    status, answer = api.post(path, {"status": "failed", "lease_token": "u\u00e9"}, headers=auth)
    assert status == 400 and "lease_token" in answer["error"]["message"], answer
    done = {"status": "running", "lease_token": task["lease_token"]}
    assert api.post(path, done, headers=auth)[0] == 200  # the real one still renews it
