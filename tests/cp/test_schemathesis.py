"""schemathesis holds a live control plane to its own OpenAPI document.

A real `docklet-cp` process on a loopback port, an admin token and a read token: every
operation of /api/openapi.json is called with inputs schemathesis makes from the document
(valid and invalid ones), and every answer must be no 5xx, a documented status, a documented
content type and a body its schema accepts. Bounded: a few examples per operation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from conftest import BIN, Process, free_port, wait_for
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
# Per operation and token: about 3,500 calls, some 35 s on two cores. DOCKLET_FUZZ_EXAMPLES
# raises it for a deeper run (500: some five minutes).
EXAMPLES = int(os.environ.get("DOCKLET_FUZZ_EXAMPLES", "60"))


class LiveCP:
    """A docklet-cp process, claimed with the bootstrap login, with a read token made."""

    def __init__(self, tmp: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        args = ["--data-dir", str(tmp / "cp"), "--host", "127.0.0.1", "--port", port]
        self.process = Process([str(BIN / "docklet-cp"), *args], tmp / "cp.log")
        self.tokens: dict[str, str] = {}

    def start(self) -> None:
        self.process.start()
        client = Client(self.url)
        wait_for(lambda: self._healthy(client), 20, "the control plane to answer")
        self.tokens["admin"] = client.post("/api/auth/bootstrap", {"name": "fuzz"})["token"]
        client.token = self.tokens["admin"]
        made = client.post("/api/tokens", {"name": "fuzz-read", "scope": "read"})
        self.tokens["read"] = made["token"]
        client.post("/api/apps", {"image": "busybox:1.36", "name": "web"})  # one to find

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
MODES = list(schemathesis.GenerationMode)  # valid inputs, and invalid ones


@pytest.mark.parametrize("scope", ["admin", "read"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_the_api_keeps_its_document(
    api_schema: schemathesis.BaseSchema, live_cp: LiveCP, scope: str, method: str, path: str
) -> None:
    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {live_cp.tokens[scope]}"}
    cases = st.one_of([operation.as_strategy(generation_mode=mode) for mode in MODES])

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
