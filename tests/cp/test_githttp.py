"""Git over HTTP against a real CP on loopback: who may push, whose failures count, how big.

Raw requests (http.client) where the exact bytes of a query matter, the real `git` client
where what a person sees matters.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ADMIN_TOKEN, wait_for

from docklet.common.status import TokenScope
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.settings import CPConfig
from docklet.cp.store import tokens

AUTH_FAILURES = 3  # the limit these tests run with, so that it is met in a few requests
ADVERTISEMENT = "application/x-git-receive-pack-advertisement"


@pytest.fixture
def config(tmp_path: Path) -> CPConfig:
    return CPConfig(
        data_dir=tmp_path / "cp",
        heartbeat_interval=0.5,
        reconcile_interval=0.2,
        auth_failures=AUTH_FAILURES,
    )


def basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"x:{token}".encode()).decode()}


def request(
    url: str, method: str, target: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One raw request: `target` is sent byte for byte, as a hostile client would."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, target, body=body or None, headers=headers)
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        conn.close()


def read_token(cp: ControlPlane) -> str:
    """A read token: the same one for every call in a test."""
    kept = getattr(cp, "_test_read_token", None)
    if kept is None:
        with cp.store.write() as db:
            kept = tokens.create(db, "reader", TokenScope.READ, "test")
        cp._test_read_token = kept  # type: ignore[attr-defined]
    return kept


def git(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "credential.helper="]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    return subprocess.run(
        ["git", *ident, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


# -- item 11: the query is read as Git reads it ----------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "service=git-receive-pack",
        "service=git%2dreceive-pack",
        "service=git%2Dreceive%2Dpack",
        "service=%67%69%74%2d%72%65%63%65%69%76%65%2d%70%61%63%6b",
        "servic%65=git-receive-pack",
    ],
)
def test_a_read_token_never_gets_the_push_advertisement(
    served_cp: str, cp: ControlPlane, query: str
) -> None:
    target = f"/git/apps.git/info/refs?{query}"
    status, headers, body = request(served_cp, "GET", target, basic(read_token(cp)))
    assert status == 403, (status, body[:200])
    assert headers.get("Content-Type") == "application/json"
    assert json.loads(body)["error"]["code"] == "forbidden"
    # The admin token gets it, however the query is spelled.
    status, headers, _ = request(served_cp, "GET", target, basic(ADMIN_TOKEN))
    assert status == 200 and headers["Content-Type"] == ADVERTISEMENT


@pytest.mark.parametrize(
    "query,problem",
    [
        ("service=git-receive-pack%00", "characters"),
        ("service%00x=git-receive-pack", "characters"),
        ("service=git-receive-pack%0a", "characters"),
        ("service=git-upload-pack&service=git-receive-pack", "more than one"),  # Git: the last
        ("service=git-upload-pack&service=git-upload-pack", "more than one"),
        ("service=git%ffreceive-pack", "not UTF-8"),
        ("service=GIT-RECEIVE-PACK", "not a Git service"),
        ("service=git-receive-pack+", "not a Git service"),
    ],
)
def test_a_query_git_could_read_another_way_is_refused(
    served_cp: str, cp: ControlPlane, query: str, problem: str
) -> None:
    for token in (read_token(cp), ADMIN_TOKEN):
        target = f"/git/apps.git/info/refs?{query}"
        status, _, body = request(served_cp, "GET", target, basic(token))
        assert status == 400, (query, status, body[:200])
        error = json.loads(body)["error"]
        assert error["code"] == "bad_request" and problem in error["message"], error


def test_the_push_itself_needs_admin_however_its_path_is_spelled(
    served_cp: str, cp: ControlPlane
) -> None:
    headers = {**basic(read_token(cp)), "Content-Type": "application/x-git-receive-pack-request"}
    for path in ("git-receive-pack", "git%2dreceive-pack", "git-receive-pac%6B"):
        status, _, body = request(served_cp, "POST", f"/git/apps.git/{path}", headers, b"0000")
        assert status == 403, (path, status, body[:200])


def test_a_read_token_still_clones_and_fetches(
    served_cp: str, cp: ControlPlane, tmp_path: Path
) -> None:
    cp.apps.create({"name": "web", "image": "nginx:1.25"}, "t <t@t>")
    host = served_cp.removeprefix("http://")
    url = f"http://x:{read_token(cp)}@{host}/git/apps.git"
    for version in ("0", "2"):
        cloned = git(tmp_path, "-c", f"protocol.version={version}", "clone", "-q", url, version)
        assert cloned.returncode == 0, cloned.stderr
        assert (tmp_path / version / "apps" / "web.yaml").exists()
    status, _, _ = request(served_cp, "GET", "/git/apps.git/info/refs", basic(read_token(cp)))
    assert status == 200  # the dumb protocol's refs: reading


# -- item 1, Git's side: a valid credential is never refused for others' failures -------


def lock_out(url: str) -> None:
    """Fail from this address until the CP answers 429, as someone guessing would."""
    for _ in range(AUTH_FAILURES + 2):
        status, _, _ = request(url, "GET", "/git/apps.git/info/refs", basic("dku_wrong"))
        if status == 429:
            return
    pytest.fail("wrong tokens were never refused with 429")


def test_a_valid_token_clones_while_wrong_ones_from_its_address_are_refused(
    served_cp: str, cp: ControlPlane, tmp_path: Path
) -> None:
    cp.apps.create({"name": "web", "image": "nginx:1.25"}, "t <t@t>")
    lock_out(served_cp)
    host = served_cp.removeprefix("http://")
    admin_url = f"http://x:{ADMIN_TOKEN}@{host}/git/apps.git"
    for attempt in range(3):  # and again, while someone keeps guessing
        cloned = git(tmp_path, "clone", "-q", admin_url, f"admin-{attempt}")
        assert cloned.returncode == 0, cloned.stderr
        status, headers, body = request(
            served_cp, "GET", "/git/apps.git/info/refs", basic("dku_wrong")
        )
        assert status == 429 and "Retry-After" in headers, body
        assert json.loads(body)["error"]["code"] == "rate_limited"
    status, _, _ = request(served_cp, "GET", "/git/apps.git/info/refs", basic(read_token(cp)))
    assert status == 200
    # A read token asking to push is refused for its scope (403), not counted as a guess.
    for _ in range(AUTH_FAILURES + 1):
        target = "/git/apps.git/info/refs?service=git-receive-pack"
        assert request(served_cp, "GET", target, basic(read_token(cp)))[0] == 403


def test_wrong_tokens_are_still_counted_and_refused(served_cp: str) -> None:
    statuses = [
        request(served_cp, "GET", "/git/apps.git/info/refs", basic(f"dku_wrong{n}"))[0]
        for n in range(AUTH_FAILURES + 2)
    ]
    assert statuses[:AUTH_FAILURES] == [401] * AUTH_FAILURES
    assert statuses[AUTH_FAILURES:] == [429, 429]


# -- item 13: Git has its own body limit, and says so ----------------------------------


def clone_with_admin(served_cp: str, cp: ControlPlane, tmp_path: Path) -> Path:
    cp.apps.create({"name": "web", "image": "nginx:1.25"}, "t <t@t>")  # main's first commit
    host = served_cp.removeprefix("http://")
    work = tmp_path / "work"
    cloned = git(tmp_path, "clone", "-q", f"http://x:{ADMIN_TOKEN}@{host}/git/apps.git", "work")
    assert cloned.returncode == 0, cloned.stderr
    return work


def commit_random(work: Path, megabytes: float) -> None:
    """A file of random bytes (Git cannot compress it) outside apps/, committed."""
    (work / "assets").mkdir(exist_ok=True)
    (work / "assets" / f"blob-{megabytes}.bin").write_bytes(os.urandom(int(megabytes * 2**20)))
    git(work, "add", "-A")
    assert git(work, "commit", "-qm", f"{megabytes} MB").returncode == 0


def test_a_6_mb_push_is_accepted(served_cp: str, cp: ControlPlane, tmp_path: Path) -> None:
    assert cp.config.max_body < 6 * 2**20 < cp.config.max_git_body  # the API's cap is smaller
    work = clone_with_admin(served_cp, cp, tmp_path)
    commit_random(work, 6)
    started = time.monotonic()
    pushed = git(work, "push", "origin", "main")
    took = time.monotonic() - started
    assert pushed.returncode == 0, pushed.stderr
    assert cp.repo.head() == git(work, "rev-parse", "HEAD").stdout.strip()
    print(f"6 MB push over HTTP: {took:.2f}s")


@pytest.mark.parametrize("post_buffer", ["1m", "100m"])  # streamed (chunked), or one length
def test_a_push_over_gits_limit_is_refused_with_a_message_git_shows(
    served_cp: str,
    cp: ControlPlane,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    post_buffer: str,
) -> None:
    work = clone_with_admin(served_cp, cp, tmp_path)
    cp.config = CPConfig(**{**dict(cp.config), "max_git_body": 2**20})  # read per request
    before = cp.repo.head()
    commit_random(work, 3)
    with caplog.at_level(logging.WARNING, logger="docklet.cp.http.githttp"):
        pushed = git(work, "-c", f"http.postBuffer={post_buffer}", "push", "origin", "main")
    assert pushed.returncode != 0
    said = pushed.stderr
    assert "remote: docklet: push refused: it is over the control plane's 1 MiB limit" in said
    assert "--max-git-body" in said and "early EOF" not in said, said
    assert "[remote rejected] main -> main (over the size limit)" in said, said
    assert cp.repo.head() == before
    wait_for(lambda: not http_backends(cp), 15, "the refused push's git http-backend to end")
    logged = [r.getMessage() for r in caplog.records]
    assert any("git: push by test-admin" in m and "1 MiB limit for Git" in m for m in logged)
    # Under the limit, the same CP takes the next push.
    git(work, "reset", "-q", "--hard", "HEAD~1")
    commit_random(work, 0.5)
    pushed = git(work, "push", "origin", "main")
    assert pushed.returncode == 0, pushed.stderr


def http_backends(cp: ControlPlane) -> list[int]:
    """The `git http-backend`s still running for this CP, orphaned ones included."""
    root = f"GIT_PROJECT_ROOT={cp.config.repo_path.parent}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"http-backend" in (entry / "cmdline").read_bytes() and root in (
                entry / "environ"
            ).read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue  # ended meanwhile, or not ours to read
    return found


def test_a_push_that_stops_short_of_its_length_leaves_no_git_behind(
    served_cp: str, cp: ControlPlane
) -> None:
    # Given a length, `git http-backend` reads until it has it, spinning on an early EOF.
    host, port = served_cp.removeprefix("http://").split(":")
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            head = {
                **basic(ADMIN_TOKEN),
                "Content-Type": "application/x-git-receive-pack-request",
                "Content-Length": "100000",
            }
            lines = "".join(f"{name}: {value}\r\n" for name, value in head.items())
            conn.sendall(
                f"POST /git/apps.git/git-receive-pack HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode()
            )
            conn.sendall(b"0000" * 10)  # 40 bytes of 100,000, and gone
    wait_for(lambda: not http_backends(cp), 15, "no git http-backend left")
    status, _, _ = request(served_cp, "GET", "/git/apps.git/info/refs", basic(ADMIN_TOKEN))
    assert status == 200
