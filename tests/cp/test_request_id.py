"""Request ids: every API answer carries one (the caller's when well-formed), and so does
every CP log line the request causes."""

from __future__ import annotations

import io
import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import ADMIN_TOKEN, WSGIClient

from docklet.common import logs
from docklet.cp.service.controlplane import ControlPlane

NEW_ID = re.compile("[0-9a-f]{32}")


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
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def echoed(api: WSGIClient, method: str, path: str, rid: str | None, **kw: Any) -> tuple[int, str]:
    """(status, X-Request-Id of the answer) of a call sending `rid` (None: no header)."""
    headers = {**kw.pop("headers", {}), "X-Request-Id": rid}
    status, body = api.request(method, path, headers=headers, **kw)
    assert status < 300 or set(body) == {"error"}  # errors keep their one shape
    return status, api.last_headers["X-Request-Id"]


def test_a_well_formed_id_is_echoed_on_every_kind_of_answer(api: WSGIClient) -> None:
    rid = "0f3c2a9e-1b7d-4c55-9e61-2f8a7d0c4b11"
    assert echoed(api, "GET", "/api/health", rid) == (200, rid)
    assert echoed(api, "GET", "/api/apps/nope", rid) == (404, rid)  # the handler's error
    assert echoed(api, "GET", "/api/nowhere", rid) == (404, rid)  # the router's
    assert echoed(api, "PUT", "/api/health", rid) == (405, rid)
    assert echoed(api, "GET", "/api/state/apps", rid, headers={"Authorization": None}) == (
        401,
        rid,
    )
    assert echoed(api, "POST", "/api/apps", rid, raw=b"{nope") == (400, rid)
    longest = "a." * 64
    assert echoed(api, "GET", "/api/health", longest) == (200, longest)


@pytest.mark.parametrize(
    "given",
    [
        "",
        "a" * 129,  # over the bound
        "two words",
        'quote"d',
        "new\nline",
        "caf\xe9",  # not ASCII (as WSGI hands a Latin-1 header over)
        "semi;colon",
        "slash/ed",
    ],
)
def test_a_malformed_id_is_replaced_by_a_new_one(api: WSGIClient, given: str) -> None:
    status, rid = echoed(api, "GET", "/api/health", given)
    assert status == 200 and NEW_ID.fullmatch(rid) and rid != given


def test_without_an_id_each_request_gets_its_own(api: WSGIClient) -> None:
    ids = {echoed(api, "GET", "/api/health", None)[1] for _ in range(5)}
    assert len(ids) == 5 and all(NEW_ID.fullmatch(i) for i in ids)


def test_the_log_lines_of_a_request_carry_its_id(api: WSGIClient, captured: io.StringIO) -> None:
    created = {"name": "web", "image": "nginx:1.25"}
    assert echoed(api, "POST", "/api/apps", "create-web", json_body=created)[0] == 201
    assert echoed(api, "POST", "/api/apps/web/stop", None)[0] == 200
    stopper = api.last_headers["X-Request-Id"]
    bad = {"Authorization": "Bearer dku_not-a-token-at-all-1234"}
    assert echoed(api, "GET", "/api/state/apps", "wrong-token", headers=bad)[0] == 401
    written = lines(captured)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for line in written:
        by_id.setdefault(line.get("request_id", ""), []).append(line)
    assert any("Create app web" in line["message"] for line in by_id["create-web"])
    assert any("Stop app web" in line["message"] for line in by_id[stopper])
    assert all(line["app"] == "web" for line in by_id[stopper])  # the app its URL names
    (refusal,) = by_id["wrong-token"]
    assert refusal["message"].startswith("auth: GET /api/state/apps") and "dku_not" not in str(
        refusal
    )
    # Lines no request caused carry none, even from a thread that served one.
    logging.getLogger("docklet.test").info("between requests")
    assert "request_id" not in lines(captured)[-1]


def _call(url: str, rid: str, body: dict[str, Any]) -> str:
    request = urllib.request.Request(
        f"{url}/api/apps",
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {ADMIN_TOKEN}",
            "Content-Type": "application/json",
            "X-Request-Id": rid,
        },
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 201
        return str(answer.headers["X-Request-Id"])


def test_concurrent_requests_over_http_keep_their_own_ids(
    served_cp: str, cp: ControlPlane, captured: io.StringIO
) -> None:
    names = [f"app-{i}" for i in range(6)]
    with ThreadPoolExecutor(len(names)) as pool:
        answers = list(
            pool.map(lambda n: _call(served_cp, f"req-{n}", {"name": n, "image": "nginx"}), names)
        )
    assert answers == [f"req-{n}" for n in names]
    # Each commit's line carries the id of the request that made it, none other's.
    # (A sync may carry another request's commit along: its lines are the syncer's.)
    committed = {
        line["app"]: line.get("request_id")
        for line in lines(captured)
        if line["message"].startswith("app_desired:")
    }
    assert committed == {name: f"req-{name}" for name in names}
    # A 404 over real HTTP echoes too; a malformed id is replaced there as well.
    missing = urllib.request.Request(f"{served_cp}/api/nowhere", headers={"X-Request-Id": "x y"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(missing, timeout=10)
    assert refused.value.code == 404 and NEW_ID.fullmatch(refused.value.headers["X-Request-Id"])
