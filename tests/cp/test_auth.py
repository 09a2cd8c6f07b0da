"""Authentication: the route table's access column, tokens, bootstrap windows, the CLI login."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import WSGIClient

from docklet.cli import credentials
from docklet.cli.main import cli
from docklet.common.status import Access
from docklet.cp.http.api import ROUTES, Route, make_app
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.settings import CPConfig


@pytest.fixture
def config(tmp_path: Path) -> CPConfig:
    return CPConfig(
        data_dir=tmp_path / "cp", heartbeat_interval=0.5, reconcile_interval=0.2, auth_failures=1000
    )


@pytest.fixture
def cp(config: CPConfig, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    """A fresh cluster: no token, no node, both bootstrap windows open."""
    monkeypatch.delenv("DOCKLET_TOKEN", raising=False)
    plane = ControlPlane(config)
    yield plane
    plane.store.close()


def client(cp: ControlPlane, address: str = "10.0.0.1") -> WSGIClient:
    c = WSGIClient(make_app(cp), token=None)
    c.address = address  # type: ignore[attr-defined]
    return c


def call(
    c: WSGIClient, method: str, path: str, token: str | None, body: Any = None, **kw: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return c.request(method, path, body or {}, headers=headers, **kw)


@pytest.fixture
def creds(cp: ControlPlane) -> dict[str, Any]:
    """A node and its token, an admin token (by the bootstrap), a read token: the seed's order."""
    c = client(cp)
    status, node = c.post("/api/agents/register", {"engine_id": "e1", "name": "n1"})
    assert status == 200, node  # the first agent: the node bootstrap window
    status, admin = c.post("/api/auth/bootstrap", {"name": "first"})
    assert status == 200, admin
    status, read = c.post(
        "/api/tokens",
        {"name": "viewer", "scope": "read"},
        headers={"Authorization": f"Bearer {admin['token']}"},
    )
    assert status == 201, read
    return {
        "admin": admin["token"],
        "read": read["token"],
        "node": node["token"],
        "node_id": node["node_id"],
    }


def concrete(route: Route, node_id: str) -> str:
    path = route.path
    for marker, value in {
        "<name>": "web",
        "<node_id>": node_id,
        "<task_id:int>": "1",
        "<rollout_id:int>": "1",
    }.items():
        path = path.replace(marker, value)
    return path


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_every_route_admits_exactly_who_its_access_names(
    cp: ControlPlane, creds: dict[str, Any], route: Route
) -> None:
    """The contract over the route table: a route added later is checked too."""
    c = client(cp)
    path = concrete(route, creds["node_id"])
    body = {"engine_id": "e-new", "name": "new"} if route.access == Access.JOIN else None
    tried = {
        who: call(c, route.method, path, token, body)
        for who, token in {
            "none": None,
            "wrong": "dku_" + "x" * 43,
            "node": creds["node"],
            "read": creds["read"],
            "admin": creds["admin"],
        }.items()
    }
    for who, (status, body) in tried.items():
        if status >= 400:
            assert set(body["error"]) == {"code", "message", "status"}, (who, body)
    refused = {who for who, (status, _) in tried.items() if status in (401, 403)}
    codes = {who: status for who, (status, _) in tried.items()}
    access = route.access
    if access in (Access.PUBLIC, Access.NODES_STATE):
        assert len(set(codes.values())) == 1, codes  # credentials change nothing
    elif access == Access.READ:
        assert refused == {"none", "wrong", "node"}, codes
        assert codes["none"] == codes["wrong"] == codes["node"] == 401
    elif access == Access.ADMIN:
        assert refused == {"none", "wrong", "node", "read"}, codes
        assert codes["read"] == 403 and codes["none"] == 401
    elif access == Access.NODE:
        assert refused == {"none", "wrong", "read", "admin"}, codes
    elif access == Access.JOIN:
        # The window closed with the first node: no user token, no stranger joins.
        assert refused == {"none", "wrong", "node", "read", "admin"}, codes
    else:
        pytest.fail(f"no check for access {access}")


def test_node_state_can_be_made_private(tmp_path: Path) -> None:
    config = CPConfig(data_dir=tmp_path / "cp2", public_node_state=False)
    plane = ControlPlane(config)
    try:
        status, body = client(plane).get("/api/state/nodes")
        assert status == 401, body
    finally:
        plane.store.close()


def test_public_node_state_reveals_no_secret(cp: ControlPlane, creds: dict[str, Any]) -> None:
    status, body = client(cp).get("/api/state/nodes")
    assert status == 200
    text = json.dumps(body)
    assert "token" not in text
    assert creds["node"] not in text and creds["node"][4:20] not in text


def test_wrong_credentials_are_rate_limited_per_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plane = ControlPlane(CPConfig(data_dir=tmp_path / "cp3", auth_failures=10))
    try:
        c = client(plane)
        secret = c.post("/api/auth/bootstrap", {})[1]["token"]
        guess = "dku_" + uuid.uuid4().hex * 2
        env = {"REMOTE_ADDR": "10.9.9.9"}
        for _ in range(10):
            assert call(c, "GET", "/api/state/apps", guess, environ=env)[0] == 401
        status, body = call(c, "GET", "/api/state/apps", guess, environ=env)
        assert status == 429 and body["error"]["code"] == "rate_limited", body
        assert 1 <= int(c.last_headers["Retry-After"]) <= 60
        # A valid token is served whatever its address's count: the guesses are someone else's.
        assert call(c, "GET", "/api/state/apps", secret, environ=env)[0] == 200
        assert (
            call(c, "GET", "/api/state/apps", secret, environ={"REMOTE_ADDR": "10.1.1.1"})[0] == 200
        )
        # Missing credentials are no guess and are not counted.
        for _ in range(20):
            assert (
                call(c, "GET", "/api/state/apps", None, environ={"REMOTE_ADDR": "10.2.2.2"})[0]
                == 401
            )
        assert (
            call(c, "GET", "/api/state/apps", secret, environ={"REMOTE_ADDR": "10.2.2.2"})[0] == 200
        )
        assert "10.9.9.9" in caplog.text and "refused" in caplog.text
        assert guess not in caplog.text and secret not in caplog.text
    finally:
        plane.store.close()


def test_the_admin_bootstrap_works_once(cp: ControlPlane) -> None:
    c = client(cp)
    assert c.get("/api/version")[1]["bootstrap"]["admin"]["open"] is True
    status, first = c.post("/api/auth/bootstrap", {"name": "me"})
    assert status == 200 and first["scope"] == "admin" and first["token"].startswith("dku_")
    status, again = c.post("/api/auth/bootstrap", {"name": "me2"})
    assert status == 403, again
    assert c.get("/api/version")[1]["bootstrap"]["admin"] == {"open": False, "closes_at": None}
    # Stored only as a hash.
    rows = cp.store.query("SELECT * FROM api_tokens")
    assert first["token"] not in json.dumps(rows)


def test_windows_close_after_the_bootstrap_time(tmp_path: Path) -> None:
    plane = ControlPlane(CPConfig(data_dir=tmp_path / "cp4", bootstrap_window=0))
    try:
        c = client(plane)
        assert c.get("/api/version")[1]["bootstrap"]["admin"]["open"] is False
        assert c.post("/api/auth/bootstrap", {})[0] == 403
        status, body = c.post("/api/agents/register", {"engine_id": "e1", "name": "n1"})
        assert status == 401 and "DOCKLET_JOIN_TOKEN" in body["error"]["message"]
    finally:
        plane.store.close()


def test_agents_join_with_the_join_token_and_rejoin_with_their_node_token(
    cp: ControlPlane, creds: dict[str, Any]
) -> None:
    c = client(cp)
    admin = {"Authorization": f"Bearer {creds['admin']}"}
    new = {"engine_id": "e2", "name": "n2"}
    assert c.post("/api/agents/register", new)[0] == 401  # the window closed with n1
    join = c.post("/api/nodes/join-token", {}, headers=admin)[1]["token"]
    assert join.startswith("dkj_")
    assert c.post("/api/nodes/join-token", {}, headers=admin)[1]["token"] == join
    status, n2 = c.post("/api/agents/register", new, headers={"X-Docklet-Join-Token": join})
    assert status == 200, n2
    # A known engine: its own node token, or the join token; its id alone is not enough.
    known = {"engine_id": "e1", "name": "n1"}
    assert c.post("/api/agents/register", known)[0] == 401
    assert call(c, "POST", "/api/agents/register", creds["admin"])[0] in (400, 401)
    status, again = c.post(
        "/api/agents/register", known, headers={"Authorization": f"Bearer {creds['node']}"}
    )
    assert status == 200 and again["node_id"] == creds["node_id"]
    # Rotating the join token voids the old one.
    rotated = c.post("/api/nodes/join-token", {"rotate": True}, headers=admin)[1]["token"]
    assert rotated != join
    new3 = {"engine_id": "e3", "name": "n3"}
    assert c.post("/api/agents/register", new3, headers={"X-Docklet-Join-Token": join})[0] == 401
    assert c.post("/api/agents/register", new3, headers={"X-Docklet-Join-Token": rotated})[0] == 200
    mode = stat.S_IMODE(os.stat(cp.config.data_dir / "join_token").st_mode)
    assert mode == 0o600


def test_tokens_are_listed_without_secrets_and_revoked_at_once(
    cp: ControlPlane, creds: dict[str, Any]
) -> None:
    c = client(cp)
    admin = {"Authorization": f"Bearer {creds['admin']}"}
    status, rows = c.get("/api/tokens", headers=admin)
    assert status == 200
    assert {r["name"]: r["scope"] for r in rows} == {"first": "admin", "viewer": "read"}
    # No secret and no hash; `created_by` names the token that made it ("token 'first'").
    assert all(
        set(r) == {"name", "scope", "created_by", "created_at", "last_used_at"} for r in rows
    )
    text = json.dumps(rows)
    assert creds["admin"] not in text and creds["read"] not in text and "hash" not in text
    assert {r["name"]: r["created_by"] for r in rows}["viewer"] == "token 'first'"
    assert call(c, "GET", "/api/auth/whoami", creds["read"])[1] == {
        "name": "viewer",
        "scope": "read",
    }
    assert c.delete("/api/tokens/viewer", headers=admin)[0] == 200
    assert call(c, "GET", "/api/state/apps", creds["read"])[0] == 401
    assert c.post("/api/tokens", {"name": "first"}, headers=admin)[0] == 409


# -- the CLI ---------------------------------------------------------------------------


def docklet(url: str, *args: str, token: str | None = None, stdin: str | None = None) -> Any:
    env = {"DOCKLET_TOKEN": token} if token else {}
    return CliRunner().invoke(cli, ["--cp", url, *args], env=env, input=stdin)


def test_the_first_cli_call_logs_in_by_itself_and_keeps_the_token_private(
    served_cp: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    first = docklet(served_cp, "ps")
    assert first.exit_code == 0, first.output
    assert "First use of this cluster: logged in" in first.stderr
    index = tmp_path / "xdg" / "docklet" / "credentials.json"
    assert stat.S_IMODE(index.stat().st_mode) == 0o600
    secret = credentials.load(served_cp)
    assert secret and secret.startswith("dku_") and secret not in first.output
    second = docklet(served_cp, "ps")
    assert second.exit_code == 0 and "logged in" not in second.stderr

    made = docklet(served_cp, "token", "create", "ci", "--scope", "read")
    assert made.exit_code == 0, made.output
    read = made.stdout.strip().splitlines()[-1]
    assert read.startswith("dku_")
    listed = docklet(served_cp, "token", "list")
    assert "ci" in listed.stdout and read not in listed.stdout
    refused = docklet(served_cp, "run", "nginx", "--detach", token=read)
    assert refused.exit_code == 4 and "403" in refused.stderr, refused.output
    assert read not in refused.output

    assert docklet(served_cp, "logout").exit_code == 0
    assert credentials.load(served_cp) is None
    login = docklet(served_cp, "login", "--token-stdin", stdin=read + "\n")
    assert login.exit_code == 0, login.output
    assert "as ci (read)" in login.stdout and read not in login.output
    assert docklet(served_cp, "token", "revoke", "ci", token=secret).exit_code == 0
    gone = docklet(served_cp, "ps")
    assert gone.exit_code == 4 and "401" in gone.stderr and read not in gone.output


def test_version_shows_the_bootstrap_windows(served_cp: str) -> None:
    out = docklet(served_cp, "version")
    assert out.exit_code == 0
    assert "bootstrap       admin window open for" in out.stdout
    assert "bootstrap       nodes window open for" in out.stdout


# -- canaries: a secret in every position, then look everywhere ---------------------------


def test_no_secret_reaches_a_log_the_repo_or_the_database(
    served_cp: str,
    cp: ControlPlane,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    caplog.set_level("DEBUG")
    env_canary = f"CANARY-ENV-{uuid.uuid4().hex}"
    outputs = [docklet(served_cp, "login").output]
    admin = credentials.load(served_cp)
    assert admin
    outputs.append(
        docklet(served_cp, "run", "nginx", "--detach", "-e", f"PASS={env_canary}").output
    )
    c = client(cp)
    status, _ = c.post(
        "/api/apps/nginx/update",
        {"env": {"PASS": env_canary + "x"}},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert status == 200
    made = docklet(served_cp, "token", "create", "ci")
    read = made.stdout.strip().splitlines()[-1]
    join = docklet(served_cp, "nodes", "join-token").stdout.strip()
    status, node = c.post(
        "/api/agents/register",
        {"engine_id": "e9", "name": "n9"},
        headers={"X-Docklet-Join-Token": join},
    )
    assert status == 200
    # Wrong and right credentials on every kind of route, so refusals are logged too.
    for token in (read, node["token"], admin, join, read + "x", node["token"] + "x"):
        call(c, "GET", "/api/state/apps", token)
        call(c, "POST", f"/api/agents/{node['node_id']}/heartbeat", token)
    outputs += [docklet(served_cp, "ps").output, docklet(served_cp, "token", "list").output]

    secrets = {"admin": admin, "read": read, "node": node["token"], "join": join}
    logs = caplog.text + "\n".join(outputs)
    for name, secret in secrets.items():
        assert secret not in logs, f"the {name} token is in a log or the CLI's output"
    assert env_canary not in logs

    git = ["git", "--git-dir", str(cp.config.repo_path)]
    history = subprocess.run(
        [*git, "log", "--all", "--format=%H %an %ae %s%n%b%n%N"], capture_output=True, text=True
    ).stdout
    notes = subprocess.run([*git, "notes", "--ref=docklet", "list"], capture_output=True).stdout
    for secret in (*secrets.values(), env_canary):
        assert secret not in history
        assert secret.encode() not in notes

    db = sqlite3.connect(cp.config.db_path)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
        for column in columns:
            if (table, column) in {("revisions", "spec"), ("tasks", "payload")}:
                continue  # the spec itself, and the deploy task that carries it to the agent
            for (value,) in db.execute(f"SELECT {column} FROM {table}"):
                text = str(value)
                for secret in (*secrets.values(), env_canary):
                    assert secret not in text, f"{table}.{column} holds a secret"
    db.close()


@pytest.mark.docker
def test_no_secret_in_the_cp_or_agent_logs_of_real_processes(cluster: Any, web_image: str) -> None:
    """The CP and the agent as processes: their logs hold no token of any kind."""
    import re

    join = cluster.join_token()
    env_canary = f"CANARY-ENV-{uuid.uuid4().hex}"
    run = cluster.docklet("run", web_image, "--name", "web", "-e", f"PASS={env_canary}")
    assert run.returncode == 0, run.stderr
    cluster.agent.stop()  # a restart: it rejoins with the node token it kept
    cluster.agent.start()
    cluster.client.get("/api/state/apps")
    state = Path(os.environ["DOCKLET_STATE_DIR"])
    (saved,) = [p for p in state.glob("node-*.json") if cluster.url in p.read_text()]
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    node_token = json.loads(saved.read_text())["token"]
    text = cluster.cp.log.read_text() + cluster.agent.log.read_text() + run.stdout + run.stderr
    for secret in (cluster.client.token, join, node_token, env_canary):
        assert secret not in text
    assert not re.search(r"dk[unj]_[A-Za-z0-9_-]{16,}", text)
