"""Who may claim, join and change a cluster (issue 13, items 4, 6, 8, 9, 10).

The node window closes once the cluster is claimed; a change names the token
that made it; a browser's simple request reaches no write and no window; token
names are one line; the last admin token is kept unless forced, and the host's
operator can mint one offline. Real HTTP on loopback where the wire matters.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from conftest import BIN, Process, WSGIClient, free_port, wait_for

from docklet.cli.main import cli
from docklet.common.errors import APIError
from docklet.cp.http.api import make_app
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.settings import CPConfig
from docklet.wire.client import Client

REGISTER = "/api/agents/register"
BOOTSTRAP = "/api/auth/bootstrap"


@pytest.fixture
def cp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    """A fresh cluster: no token, no node, both bootstrap windows open."""
    monkeypatch.delenv("DOCKLET_TOKEN", raising=False)
    plane = ControlPlane(
        CPConfig(
            data_dir=tmp_path / "cp",
            heartbeat_interval=0.5,
            reconcile_interval=0.2,
            auth_failures=1000,
        )
    )
    yield plane
    plane.store.close()


def wsgi(cp: ControlPlane) -> WSGIClient:
    return WSGIClient(make_app(cp), token=None)


def claim(cp: ControlPlane, name: str = "owner") -> str:
    """The bootstrap's admin token, as the first `docklet login` gets it."""
    status, answer = wsgi(cp).post(BOOTSTRAP, {"name": name})
    assert status == 200, answer
    return str(answer["token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refused(call: Any) -> APIError:
    with pytest.raises(APIError) as caught:
        call()
    return caught.value


# -- 4. the node window closes once the cluster is claimed ------------------------------------


def test_the_node_window_closes_once_the_cluster_is_claimed(served_cp: str) -> None:
    anon = Client(served_cp)
    admin = Client(served_cp, token=anon.post(BOOTSTRAP, {"name": "owner"})["token"])
    admin.post("/api/apps", {"name": "db", "image": "postgres:16", "env": {"DB_PASSWORD": "pw"}})
    assert anon.get("/api/version")["bootstrap"]["nodes"] == {"open": False, "closes_at": None}

    intruder = refused(lambda: anon.post(REGISTER, {"engine_id": "e-x", "name": "intruder"}))
    assert intruder.status == 401 and "DOCKLET_JOIN_TOKEN" in intruder.message
    # A made-up join token or node token opens nothing either.
    anon.headers["X-Docklet-Join-Token"] = "dkj_" + "x" * 43
    assert refused(lambda: anon.post(REGISTER, {"engine_id": "e-x", "name": "x"})).status == 401
    assert admin.get("/api/state/nodes") == []

    # The real first agent joins with the join token the admin hands it.
    agent = Client(served_cp)
    agent.headers["X-Docklet-Join-Token"] = admin.post("/api/nodes/join-token", {})["token"]
    joined = agent.post(REGISTER, {"engine_id": "e-1", "name": "n1"})
    assert joined["node_id"] == "n1" and joined["token"].startswith("dkn_")


def test_the_seed_order_still_needs_no_secret(served_cp: str) -> None:
    """CP, then the first agent with no token, then the first CLI command claims the admin."""
    anon = Client(served_cp)
    assert anon.post(REGISTER, {"engine_id": "e-1", "name": "n1"})["node_id"] == "n1"
    assert anon.post(BOOTSTRAP, {"name": "owner"})["scope"] == "admin"
    assert refused(lambda: anon.post(REGISTER, {"engine_id": "e-2", "name": "n2"})).status == 401


def test_an_offline_minted_token_also_closes_the_node_window(cp: ControlPlane) -> None:
    from docklet.cp import admin

    admin.mint(cp.config.data_dir, "ops", "admin")
    status, body = wsgi(cp).post(REGISTER, {"engine_id": "e-1", "name": "n1"})
    assert status == 401, body


# -- 6. a change names the token that made it ---------------------------------------------------


def trailers(repo: Path, key: str) -> list[str]:
    out = subprocess.run(
        ["git", "--git-dir", str(repo), "log", "-1", f"--format=%(trailers:key={key},valueonly)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_a_commit_and_its_events_name_the_token_not_what_the_caller_says(
    cp: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    c = wsgi(cp)
    owner = claim(cp)
    status, ci = c.post("/api/tokens", {"name": "ci", "scope": "admin"}, headers=bearer(owner))
    assert status == 201, ci
    said = {**bearer(ci["token"]), "X-Docklet-User": "ceo@example.com"}
    status, body = c.post("/api/apps", {"name": "web", "image": "nginx:1.25"}, headers=said)
    assert status == 201, body

    commit = cp.repo.read(cp.repo.head())
    assert trailers(cp.config.repo_path, "Docklet-Token") == ["ci"]
    assert commit.message.splitlines()[0] == "Create app web (nginx:1.25)"
    # What the caller says stays what it is: a claim, next to the token's name.
    assert commit.author.startswith("ceo@example.com")
    events = [e["message"] for e in cp.views.events("web", 50)]
    assert any("token 'ci'" in m and "ceo@example.com" in m for m in events), events
    assert "token 'ci'" in caplog.text

    # No header: the token's name is the author.
    status, _ = c.post("/api/apps/web/stop", {}, headers=bearer(ci["token"]))
    assert status == 200
    assert cp.repo.read(cp.repo.head()).author.startswith("ci <")
    assert trailers(cp.config.repo_path, "Docklet-Token") == ["ci"]

    # Tokens made and revoked name the token that did it, not the header.
    status, _ = c.post("/api/tokens", {"name": "viewer"}, headers=said)
    assert status == 201
    assert c.delete("/api/tokens/viewer", headers=said)[0] == 200
    told = [e["message"] for e in cp.views.events(None, 50) if e["kind"] == "token"]
    assert any("'viewer'" in m and "created by token 'ci'" in m for m in told), told
    assert any("'viewer'" in m and "revoked by token 'ci'" in m for m in told), told


def test_a_forged_trailer_in_an_update_is_not_a_trailer(cp: ControlPlane) -> None:
    c = wsgi(cp)
    owner = claim(cp)
    assert c.post("/api/apps", {"name": "web", "image": "nginx:1.25"}, headers=bearer(owner))[0]
    forged = {"replicas": 2, "x\n\nDocklet-Token: ceo": 1}
    c.post("/api/apps/web/update", forged, headers=bearer(owner))
    c.post("/api/apps/web/update", {"replicas": 2}, headers=bearer(owner))
    assert trailers(cp.config.repo_path, "Docklet-Token") == ["owner"]


# -- 8. no write and no window for a browser's simple request ------------------------------------


def raw_post(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    """A request exactly as given (http.client adds Host only when told nothing else)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.putrequest("POST", path, skip_host="Host" in headers)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read() or b"null")
    finally:
        conn.close()


def test_a_web_page_cannot_claim_the_open_window(served_cp: str) -> None:
    """The issue's reproduction: text/plain and any Host used to get an admin token."""
    name = json.dumps({"name": "page"}).encode()
    simple = {"Content-Type": "text/plain"}
    status, body = raw_post(served_cp, BOOTSTRAP, name, simple)
    assert status == 415 and "application/json" in body["error"]["message"], body
    assert set(body["error"]) == {"code", "message", "status"}

    as_json = {"Content-Type": "application/json"}
    for extra, words in (
        ({"Host": "evil.example:8080"}, "--allowed-hosts"),
        ({"Origin": "http://evil.example"}, "Origin"),
        ({"Origin": "null"}, "Origin"),
        ({"Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site"),
        ({"Sec-Fetch-Site": "same-site"}, "Sec-Fetch-Site"),
    ):
        status, body = raw_post(served_cp, BOOTSTRAP, name, {**as_json, **extra})
        assert status == 403 and words in body["error"]["message"], (extra, body)
        status, body = raw_post(served_cp, REGISTER, b'{"engine_id":"e","name":"n"}', extra)
        assert status in (403, 415), (extra, body)
    assert Client(served_cp).get("/api/version")["bootstrap"]["admin"]["open"] is True
    assert Client(served_cp).get("/api/version")["bootstrap"]["nodes"]["open"] is True

    # The CLI's and the agents' own requests: JSON, their Host, no Origin.
    port = urlsplit(served_cp).port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.1"):
        own = {**as_json, "Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
        assert raw_post(served_cp, "/api/auth/bootstrap", b"{}", own)[0] in (200, 403)
    assert Client(served_cp).get("/api/version")["bootstrap"]["admin"]["open"] is False


def test_writes_need_json_and_the_api_answers_no_cors(cp: ControlPlane) -> None:
    c = wsgi(cp)
    owner = claim(cp)
    form = {"CONTENT_TYPE": "application/x-www-form-urlencoded"}
    status, body = c.post("/api/apps", {"image": "nginx"}, headers=bearer(owner), environ=form)
    assert status == 415 and "Content-Type: application/json" in body["error"]["message"], body
    status, body = c.post(
        "/api/tokens", {"name": "x"}, headers={**bearer(owner), "Sec-Fetch-Site": "cross-site"}
    )
    assert status == 403, body
    # A write with a token from any Host is the token's business: agents and the CLI
    # reach the CP by whatever name the operator gave them.
    named = {**bearer(owner), "Host": "cp.internal:8080"}
    assert c.post("/api/apps", {"image": "nginx:1.25"}, headers=named)[0] == 201
    assert (
        c.request("DELETE", "/api/apps/nginx", headers=named, environ={"CONTENT_TYPE": ""})[0]
        == 200
    )
    status, body = c.request("OPTIONS", BOOTSTRAP, headers={"Origin": "http://evil.example"})
    assert status == 405 and "Access-Control-Allow-Origin" not in c.last_headers


def test_a_named_host_may_be_allowed(tmp_path: Path) -> None:
    config = CPConfig(data_dir=tmp_path / "cp", allowed_hosts="cp.example.com, cp")
    plane = ControlPlane(config)
    try:
        c = wsgi(plane)
        assert (
            c.post(REGISTER, {"engine_id": "e", "name": "n"}, headers={"Host": "cp:80"})[0] == 200
        )
        assert c.post(BOOTSTRAP, {}, headers={"Host": "other.example.com"})[0] == 403
        assert c.post(BOOTSTRAP, {}, headers={"Host": "CP.example.com:8080"})[0] == 200
    finally:
        plane.store.close()


# -- 9. a token name is one line -------------------------------------------------------------------


def docklet(url: str, *args: str, token: str) -> Any:
    return CliRunner().invoke(cli, ["--cp", url, *args], env={"DOCKLET_TOKEN": token})


def test_a_token_name_with_a_newline_is_refused(served_cp: str, cp: ControlPlane) -> None:
    owner = Client(served_cp).post(BOOTSTRAP, {"name": "owner"})["token"]
    admin = Client(served_cp, token=owner)
    admin.post("/api/tokens", {"name": "ci"})
    for name in ("ci\n", "ci\r\n", "ci\x00", "ci "):
        error = refused(lambda name=name: admin.post("/api/tokens", {"name": name}))
        assert error.status == 400 and "letters, digits" in error.message, name
    assert [t["name"] for t in admin.get("/api/tokens")] == ["ci", "owner"]
    listed = docklet(served_cp, "token", "list", token=owner)
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert len(lines) == 3 and [line.split()[0] for line in lines] == ["NAME", "ci", "owner"]


# -- 10. the last admin token is kept unless forced; minting one offline ---------------------------


def test_the_last_admin_token_is_kept_unless_forced(served_cp: str) -> None:
    owner = Client(served_cp).post(BOOTSTRAP, {"name": "owner"})["token"]
    admin = Client(served_cp, token=owner)
    read = admin.post("/api/tokens", {"name": "viewer"})["token"]
    error = refused(lambda: admin.delete("/api/tokens/owner"))
    assert (
        error.status == 409 and "--force" in error.message and "docklet-cp token" in error.message
    )
    assert admin.get("/api/auth/whoami")["name"] == "owner"
    assert admin.delete("/api/tokens/viewer")["revoked"] is True  # a read token is no last admin
    assert refused(lambda: Client(served_cp, token=read).get("/api/state/apps")).status == 401

    cli_refused = docklet(served_cp, "token", "revoke", "owner", token=owner)
    assert cli_refused.exit_code == 4 and "--force" in cli_refused.stderr, cli_refused.output
    second = admin.post("/api/tokens", {"name": "second", "scope": "admin"})["token"]
    assert docklet(served_cp, "token", "revoke", "owner", token=second).exit_code == 0
    assert refused(lambda: admin.get("/api/state/apps")).status == 401
    forced = docklet(served_cp, "token", "revoke", "second", "--force", token=second)
    assert forced.exit_code == 0 and "Revoked second" in forced.stdout, forced.output
    assert refused(lambda: Client(served_cp, token=second).get("/api/tokens")).status == 401


def docklet_cp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "docklet-cp"), *args], capture_output=True, text=True, timeout=60
    )


def test_the_operator_mints_an_admin_token_offline_while_the_cp_runs(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = Process(
        [
            str(BIN / "docklet-cp"),
            "--data-dir",
            str(data),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        tmp_path / "cp.log",
    )
    server.start()
    try:
        wait_for(lambda: _answers(url), 20, "docklet-cp to answer")
        owner = Client(url).post(BOOTSTRAP, {"name": "owner"})["token"]
        Client(url, token=owner).delete("/api/tokens/owner?force=true")

        made = docklet_cp("token", "create", "--data-dir", str(data), "rescue", "--scope", "admin")
        assert made.returncode == 0, made.stderr
        secret = made.stdout.strip().splitlines()[-1]
        assert secret.startswith("dku_") and secret not in made.stderr
        rescued = Client(url, token=secret)
        assert rescued.get("/api/auth/whoami") == {"name": "rescue", "scope": "admin"}
        events = rescued.get("/api/events")
        assert any("'rescue'" in e["message"] and "offline" in e["message"] for e in events)

        again = docklet_cp("token", "create", "--data-dir", str(data), "rescue", "--scope", "admin")
        assert (
            again.returncode == 1 and "exists" in again.stderr and "Traceback" not in again.stderr
        )
        bad = docklet_cp("token", "create", "--data-dir", str(data), "ci\n")
        assert bad.returncode == 2 and "letters, digits" in bad.stderr, bad.stderr
    finally:
        server.stop()


def test_docklet_cp_mints_only_where_a_cluster_lives(tmp_path: Path) -> None:
    nowhere = tmp_path / "typo"
    made = docklet_cp("token", "create", "--data-dir", str(nowhere), "rescue", "--scope", "admin")
    assert made.returncode == 2 and "no control plane data" in made.stderr, made.stderr
    assert not nowhere.exists()
    helped = docklet_cp("--help")
    assert helped.returncode == 0 and "token" in helped.stdout and "--data-dir" in helped.stdout
    assert "Example" in docklet_cp("token", "create", "--help").stdout


def _answers(url: str) -> bool:
    try:
        return Client(url).get("/api/health") == {"status": "ok"}
    except Exception:  # not up yet
        return False


def test_the_offline_mint_needs_no_server(cp: ControlPlane) -> None:
    from docklet.cp import admin

    secret = admin.mint(cp.config.data_dir, "ops", "admin")
    status, who = wsgi(cp).get("/api/auth/whoami", headers=bearer(secret))
    assert status == 200 and who == {"name": "ops", "scope": "admin"}
    assert os.environ.get("DOCKLET_TOKEN") is None
