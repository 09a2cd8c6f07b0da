"""Commit statuses on the forge (upstream mode, --git-status-token-file).

The upstream is the real Git server of test_upstream.py; the forge's status
API is a small HTTP server on loopback that records what it is sent (no
forge can be run here), answering as the forges do (201).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cheroot import wsgi
from conftest import wait_for
from test_upstream import APP, GitHost, plane, upstream_config

from docklet.common.status import RolloutStatus
from docklet.cp.desired.forge import Call, State, Status, api_of, call, kind_of

SHA = "0123456789abcdef0123456789abcdef01234567"


class StatusAPI:
    """Records each status posted to it: (path, headers that matter, body)."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, str, dict[str, Any]]] = []
        self.server = wsgi.Server(("127.0.0.1", 0), self.app, numthreads=2)
        self.server.prepare()
        self.url = f"http://127.0.0.1:{self.server.bind_addr[1]}/api/v1"
        threading.Thread(target=self.server.serve, daemon=True).start()

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length))
        self.posted.append((environ["PATH_INFO"], environ.get("HTTP_AUTHORIZATION", ""), body))
        start_response("201 Created", [("Content-Type", "application/json")])
        return [b"{}"]


@pytest.fixture
def githost(tmp_path: Path) -> Iterator[GitHost]:
    """The upstream: a real Git server (test_upstream.GitHost), with a first commit."""
    made = GitHost(tmp_path / "host")
    made.commit({"README.md": "deployment files\n"}, "start")
    yield made
    made.stop()


@pytest.fixture
def status_api() -> Iterator[StatusAPI]:
    api = StatusAPI()
    yield api
    api.server.stop()


def test_each_synced_commit_gets_a_status_and_a_bad_one_says_file_and_line(
    tmp_path: Path, githost: GitHost, status_api: StatusAPI
) -> None:
    token = tmp_path / "forge.token"
    token.write_text("forge-token-123\n")
    config = upstream_config(
        tmp_path,
        githost.url,
        git_status_token_file=token,
        git_forge="forgejo",
        git_status_api=status_api.url,
    )
    cp = plane(config)
    try:
        first = githost.commit({"apps/web.yaml": APP.format(name="web", image="nginx:1.25")})
        cp.passes.follow()
        second = githost.commit({"apps/web.yaml": APP.format(name="web", image="nginx:1.27")})
        cp.passes.follow()
        bad = githost.commit({"apps/web.yaml": "name: web\nimage: nginx:1.27\nreplicas: x\n"})
        cp.passes.follow()
        wait_for(lambda: len(status_api.posted) >= 3, 10, "three statuses")
    finally:
        cp.store.close()
    by_sha = {path.rsplit("/", 1)[1]: (path, auth, body) for path, auth, body in status_api.posted}
    path, auth, body = by_sha[first]
    assert path == f"/api/v1/repos/upstream/statuses/{first}" and auth == "token forge-token-123"
    assert body == {"state": "success", "context": "docklet", "description": "synced: web v1"}
    assert by_sha[second][2]["state"] == "pending"
    assert by_sha[second][2]["description"] == "rolling out web v2"
    assert by_sha[bad][2]["state"] == "failure"
    assert "apps/web.yaml:3" in by_sha[bad][2]["description"]


def test_a_finished_rollout_is_its_commits_status(
    tmp_path: Path, githost: GitHost, status_api: StatusAPI
) -> None:
    token = tmp_path / "forge.token"
    token.write_text("t")
    config = upstream_config(
        tmp_path, githost.url, git_status_token_file=token, git_status_api=status_api.url
    )
    cp = plane(config)
    try:
        assert cp.passes.forge is not None and cp.passes.forge.kind == "gitea"
        for status in (RolloutStatus.ROLLED_BACK, RolloutStatus.STABLE):
            row = {"status": status, "to_commit": SHA, "app": "web", "revision": 2}
            cp.passes._status_of_outcome({**row, "reason": "canary exited 1"})
        wait_for(lambda: len(status_api.posted) == 2, 10, "two statuses")
    finally:
        cp.store.close()
    assert [body["state"] for _, _, body in status_api.posted] == ["failure", "success"]
    assert status_api.posted[0][2]["description"] == "web v2 rolled_back: canary exited 1"
    assert status_api.posted[1][2]["description"] == "web v2 is stable"


def test_the_requests_each_forge_takes() -> None:
    status = Status(SHA, State.FAILURE, "apps/web.yaml:3: replicas: not an integer")
    url = "git@github.com:team/deploy.git"
    assert (kind_of(url), api_of("github", url)) == ("github", "https://api.github.com")
    assert call("github", api_of("github", url), "team/deploy", "ghp_x", status) == Call(
        f"https://api.github.com/repos/team/deploy/statuses/{SHA}",
        {
            "Authorization": "Bearer ghp_x",
            "Accept": "application/json",
            "Content-Type": "application/json",
        },
        {"state": "failure", "context": "docklet", "description": status.description},
    )
    url = "https://gitlab.example.com/team/deploy.git"
    assert (kind_of(url), api_of("gitlab", url)) == ("gitlab", "https://gitlab.example.com/api/v4")
    assert call(
        "gitlab", "https://gitlab.example.com/api/v4", "team/deploy", "glp", status
    ) == Call(
        f"https://gitlab.example.com/api/v4/projects/team%2Fdeploy/statuses/{SHA}",
        {"PRIVATE-TOKEN": "glp", "Content-Type": "application/json"},
        {"state": "failed", "name": "docklet", "description": status.description},
    )
    assert (
        api_of("gitea", "https://git.example.com/team/deploy") == "https://git.example.com/api/v1"
    )
