"""Upstream mode (--git-url) against a real Git server the tests start.

The upstream is Git's own `git http-backend` behind a small WSGI server on
loopback with HTTP basic auth (a writer and a read-only token, so the token
path is real), or `git daemon` for git://, or a path for file://. Webhooks are
real payloads of GitHub, Gitea and GitLab, signed in the test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cheroot import wsgi
from conftest import WSGIClient, free_port, wait_for

from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.settings import CPConfig
from docklet.cp.store import views as stored

SECRET = "webhook-secret-for-tests"
WRITER, READER = ("writer", "wtoken-0123456789"), ("reader", "rtoken-0123456789")
APP = "name: {name}\nimage: {image}\nreplicas: 1\n"


# -- the upstream: git http-backend behind basic auth ------------------------------------


def _backend() -> str:
    exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True).stdout
    return str(Path(exec_path.strip()) / "git-http-backend")


class GitHost:
    """A bare repository served over HTTP by `git http-backend`; the reader may not push."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = root / "upstream.git"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.repo)], check=True)
        self.backend = _backend()
        self.server = wsgi.Server(("127.0.0.1", 0), self.app, numthreads=4)
        self.server.prepare()
        self.port = self.server.bind_addr[1]
        self.url = f"http://127.0.0.1:{self.port}/upstream.git"
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()
        self.work = root / "work"  # a person's clone of the upstream

    def stop(self) -> None:
        self.server.stop()

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        user = _basic_user(environ.get("HTTP_AUTHORIZATION", ""))
        if user is None:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"')])
            return [b"credentials, please\n"]
        pushing = "receive-pack" in environ.get("PATH_INFO", "") + environ.get("QUERY_STRING", "")
        if pushing and user != WRITER[0]:
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"this token may not push\n"]
        body = environ["wsgi.input"].read()  # whole: libgit2 sends a push chunked
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": environ["PATH_INFO"],
            "REQUEST_METHOD": environ["REQUEST_METHOD"],
            "QUERY_STRING": environ.get("QUERY_STRING", ""),
            "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": user,
            "GIT_PROTOCOL": environ.get("HTTP_GIT_PROTOCOL", ""),
            "HTTP_CONTENT_ENCODING": environ.get("HTTP_CONTENT_ENCODING", ""),
        }
        out = subprocess.run([self.backend], input=body, env=env, capture_output=True).stdout
        head, _, rest = out.partition(b"\r\n\r\n")
        status, headers = "200 OK", []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = value.strip()
            elif name:
                headers.append((name, value.strip()))
        start_response(status, headers)
        return [rest]

    # -- what a person does to it ---------------------------------------------------------

    def auth_url(self, who: tuple[str, str] = WRITER) -> str:
        return self.url.replace("http://", f"http://{who[0]}:{who[1]}@")

    def commit(self, files: dict[str, str | None], message: str = "change") -> str:
        """Commit `files` (None deletes) in the person's clone and push them upstream."""
        if not self.work.exists():
            git("clone", "-q", self.auth_url(), str(self.work), cwd=self.root)
        git("pull", "-q", "--ff-only", "origin", "main", cwd=self.work, check=False)
        for path, text in files.items():
            target = self.work / path
            if text is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", message, cwd=self.work)
        git("push", "-q", "origin", "HEAD:main", cwd=self.work)
        return self.head()

    def head(self) -> str:
        return git("rev-parse", "refs/heads/main", cwd=self.repo).strip()

    def show(self, what: str) -> str:
        return git("log", "-1", f"--format={what}", "refs/heads/main", cwd=self.repo).strip()

    def file(self, path: str) -> str | None:
        done = subprocess.run(
            ["git", "show", f"refs/heads/main:{path}"], cwd=self.repo, capture_output=True
        )
        return done.stdout.decode() if done.returncode == 0 else None


def _basic_user(header: str) -> str | None:
    if not header.startswith("Basic "):
        return None
    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    return user if (user, password) in (WRITER, READER) else None


def git(*args: str, cwd: Path, check: bool = True) -> str:
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Pat",
        "GIT_AUTHOR_EMAIL": "pat@example.com",
        "GIT_COMMITTER_NAME": "Pat",
        "GIT_COMMITTER_EMAIL": "pat@example.com",
    }
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {done.stderr}")
    return done.stdout


# -- webhooks as the forges send them ------------------------------------------------------


def signed(forge: str, payload: dict[str, Any], secret: str = SECRET) -> tuple[bytes, dict]:
    body = json.dumps(payload).encode()
    mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "github": {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={mac}"},
        "gitea": {"X-Gitea-Event": "push", "X-Gitea-Signature": mac},
        "forgejo": {"X-Forgejo-Event": "push", "X-Forgejo-Signature": mac},
        "gitlab": {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": secret},
    }[forge]
    return body, {"Content-Type": "application/json", **headers}


def payload(forge: str, url: str, ref: str = "refs/heads/main", after: str = "0" * 40) -> dict:
    """The parts of each forge's push payload Docklet reads, shaped as each sends them."""
    if forge == "gitlab":
        project = {"git_http_url": url, "git_ssh_url": "git@127.0.0.1:upstream.git"}
        return {"object_kind": "push", "ref": ref, "after": after, "project": project}
    repository = {"full_name": "team/upstream", "clone_url": url, "html_url": url[:-4]}
    return {"ref": ref, "after": after, "repository": repository, "pusher": {"name": "pat"}}


def post_hook(base: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base}/api/hooks/git", body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def host(tmp_path: Path) -> Iterator[GitHost]:
    githost = GitHost(tmp_path / "host")
    githost.commit({"README.md": "deployment files\n"}, "start")
    yield githost
    githost.stop()


def upstream_config(tmp_path: Path, url: str, token: str | None = WRITER[1], **extra: Any):
    tmp_path.mkdir(parents=True, exist_ok=True)
    secret = tmp_path / "webhook.secret"
    secret.write_text(SECRET + "\n")
    token_file = None
    if token is not None:
        token_file = tmp_path / "git.token"
        token_file.write_text(token + "\n")
    return CPConfig(
        data_dir=tmp_path / "cp",
        heartbeat_interval=0.5,
        reconcile_interval=0.2,
        git_url=url,
        git_token_file=token_file,
        git_username="writer" if token == WRITER[1] else "reader",
        git_webhook_secret_file=secret,
        **{"git_poll": 60.0, **extra},
    )


@pytest.fixture
def config(tmp_path: Path, host: GitHost) -> CPConfig:
    """The conftest's `cp`, `api` and `served_cp` fixtures, in upstream mode."""
    return upstream_config(tmp_path, host.url)


def plane(config: CPConfig) -> ControlPlane:
    """A control plane of its own settings, with the conftest's admin token."""
    from conftest import ADMIN_TOKEN

    from docklet.common.status import TokenScope
    from docklet.cp.store import tokens

    made = ControlPlane(config)
    with made.store.write() as db:
        tokens.create(db, "test-admin", TokenScope.ADMIN, "test", secret=ADMIN_TOKEN)
    return made


def revision_of(cp: ControlPlane, app: str) -> int | None:
    """The app's newest revision number (None: none yet)."""
    history = stored.revision_history(cp.store, app)
    return history[0]["number"] if history else None


# -- fetching: webhooks and polling ---------------------------------------------------------


@pytest.mark.parametrize("forge", ["github", "gitea", "forgejo", "gitlab"])
def test_a_push_upstream_reaches_a_revision_by_webhook(
    cp: ControlPlane, served_cp: str, host: GitHost, forge: str
) -> None:
    wait_for(lambda: cp.repo.head() == host.head(), 10, "the first fetch")
    sha = host.commit({"apps/web.yaml": APP.format(name="web", image="nginx:1.25")}, "Add web")
    time.sleep(0.3)
    assert cp.repo.head() != sha  # polls are a minute apart: only the webhook can bring it
    status, answer = post_hook(served_cp, *signed(forge, payload(forge, host.url, after=sha)))
    assert (status, answer) == (202, {"status": "accepted", "fetch": "queued"})
    wait_for(lambda: revision_of(cp, "web") == 1, 10, "revision v1 of web")
    assert stored.sync_errors(cp.store) == []


def test_a_push_upstream_reaches_a_revision_by_polling(tmp_path: Path, host: GitHost) -> None:
    from docklet.cp.controller import Controller

    cp = ControlPlane(upstream_config(tmp_path, host.url, git_poll=0.3))
    stop = threading.Event()
    thread = threading.Thread(target=Controller(cp).run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: cp.repo.head() == host.head(), 10, "the first fetch")
        host.commit({"apps/web.yaml": APP.format(name="web", image="nginx:1.25")}, "Add web")
        wait_for(lambda: revision_of(cp, "web") == 1, 10, "revision v1 by polling")
    finally:
        stop.set()
        cp.changes.wake()
        thread.join(timeout=10)
        cp.store.close()


@pytest.mark.parametrize("forge", ["github", "gitea", "gitlab"])
def test_an_unsigned_or_badly_signed_webhook_changes_nothing(
    cp: ControlPlane, served_cp: str, host: GitHost, forge: str, caplog: pytest.LogCaptureFixture
) -> None:
    wait_for(lambda: cp.repo.head() == host.head(), 10, "the first fetch")
    before = cp.repo.head()
    host.commit({"apps/web.yaml": APP.format(name="web", image="nginx:1.25")}, "Add web")
    body, _ = signed(forge, payload(forge, host.url))
    status, answer = post_hook(served_cp, body, {"Content-Type": "application/json"})
    assert status == 401 and answer["error"]["code"] == "unauthorized", answer
    assert "X-Hub-Signature-256" in answer["error"]["message"]
    wrong_body, wrong = signed(forge, payload(forge, host.url), secret="not-the-secret")
    status, answer = post_hook(served_cp, wrong_body, wrong)
    assert status == 403 and set(answer["error"]) == {"code", "message", "status"}, answer
    _, right = signed(forge, payload(forge, host.url))
    tampered = body.replace(b"refs/heads/main", b"refs/heads/mai2")
    if forge != "gitlab":  # GitLab's token signs no body: only its secret is checked
        assert post_hook(served_cp, tampered, right)[0] == 403
    time.sleep(1.0)
    assert cp.repo.head() == before and revision_of(cp, "web") is None
    refusals = [r.getMessage() for r in caplog.records if "webhook from" in r.getMessage()]
    assert any("unsigned" in m for m in refusals) and any("wrong" in m for m in refusals)
    assert not any("refs/heads" in m or "clone_url" in m for m in refusals)  # never the body


def test_webhooks_for_another_branch_repository_or_event_are_ignored(
    cp: ControlPlane, api: WSGIClient, host: GitHost
) -> None:
    cases = [
        (payload("github", host.url, ref="refs/heads/feature"), "refs/heads/feature"),
        (payload("github", "https://example.com/team/other.git"), "another repository"),
        (payload("gitlab", host.url, ref="refs/tags/v1"), "refs/tags/v1"),
    ]
    for data, said in cases:
        forge = "gitlab" if "project" in data else "github"
        body, headers = signed(forge, data)
        status, answer = api.request("POST", "/api/hooks/git", raw=body, headers=headers)
        assert status == 202 and answer["status"] == "ignored", answer
        assert said in answer["reason"]
    body, headers = signed("github", {"zen": "Keep it simple.", "hook_id": 1})
    headers["X-GitHub-Event"] = "ping"
    status, answer = api.request("POST", "/api/hooks/git", raw=body, headers=headers)
    assert (status, answer["status"]) == (202, "ignored") and "ping" in answer["reason"]
    assert not cp.upstream._bell.is_set()


def test_a_github_form_encoded_webhook_is_read_too(
    cp: ControlPlane, api: WSGIClient, host: GitHost
) -> None:
    from urllib.parse import urlencode

    body = urlencode({"payload": json.dumps(payload("github", host.url))}).encode()
    mac = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={mac}"}
    form = {"CONTENT_TYPE": "application/x-www-form-urlencoded"}
    status, answer = api.request("POST", "/api/hooks/git", raw=body, headers=headers, environ=form)
    assert (status, answer) == (202, {"status": "accepted", "fetch": "queued"})


def test_webhooks_are_refused_when_off_or_without_an_upstream(
    tmp_path: Path, host: GitHost
) -> None:
    from docklet.cp.http.api import make_app

    off = upstream_config(tmp_path, host.url)
    off = CPConfig(**{**dict(off), "git_webhook_secret_file": None, "data_dir": tmp_path / "a"})
    hosted = CPConfig(data_dir=tmp_path / "b")
    body, headers = signed("github", payload("github", host.url))
    for config, status in ((off, 403), (hosted, 404)):
        plane = ControlPlane(config)
        try:
            got, answer = WSGIClient(make_app(plane)).request(
                "POST", "/api/hooks/git", raw=body, headers=headers
            )
        finally:
            plane.store.close()
        assert got == status and set(answer["error"]) == {"code", "message", "status"}
    big = b"{" + b" " * (1024 * 1024 + 1) + b"}"
    plane = ControlPlane(upstream_config(tmp_path / "c", host.url))
    try:
        got, answer = WSGIClient(make_app(plane)).request(
            "POST", "/api/hooks/git", raw=big, headers=signed("github", {})[1]
        )
    finally:
        plane.store.close()
    assert got == 413 and answer["error"]["code"] == "too_large"


# -- the CP's own commits: pushed upstream ------------------------------------------------


def create(api: WSGIClient, name: str = "web", user: str = "alice", **fields: Any) -> tuple:
    data = {"name": name, "image": "nginx:1.25", **fields}
    return api.post("/api/apps", data, headers={"X-Docklet-User": user})


def test_update_commits_upstream_with_the_caller_as_author(
    cp: ControlPlane, api: WSGIClient, host: GitHost
) -> None:
    cp.passes.follow()
    status, view = create(api)
    assert status == 201, view
    assert host.head() == view["commit"] == cp.repo.head()
    assert "name: web" in (host.file("apps/web.yaml") or "")
    status, view = api.post(
        "/api/apps/web/update", {"replicas": 2}, headers={"X-Docklet-User": "bob"}
    )
    assert status == 200, view
    assert host.head() == view["commit"]
    assert host.show("%an") == "bob"  # the caller, as the API says who it is
    assert "Docklet-Token: test-admin" in host.show("%B")
    assert "replicas: 2" in (host.file("apps/web.yaml") or "")
    assert revision_of(cp, "web") == 2


def test_a_concurrent_push_upstream_is_retried_on_the_new_head(
    cp: ControlPlane, api: WSGIClient, host: GitHost
) -> None:
    cp.passes.follow()
    assert create(api)[0] == 201
    # Someone pushes meanwhile; the CP has not fetched it when it next commits.
    theirs = host.commit({"apps/db.yaml": APP.format(name="db", image="postgres:16")}, "Add db")
    status, view = api.post("/api/apps/web/update", {"replicas": 3})
    assert status == 200, view
    assert git("rev-parse", f"{view['commit']}^", cwd=host.repo).strip() == theirs
    assert "replicas: 3" in (host.file("apps/web.yaml") or "")
    assert host.file("apps/db.yaml") is not None  # theirs kept, nothing overwritten
    assert cp.repo.head() == host.head() and revision_of(cp, "db") == 1


def test_read_only_credentials_answer_409_and_change_nothing(tmp_path: Path, host: GitHost) -> None:
    from docklet.cp.http.api import make_app

    cp = plane(upstream_config(tmp_path, host.url, token=READER[1]))
    try:
        cp.passes.follow()  # a read-only token fetches
        assert cp.repo.head() == host.head()
        before = host.head()
        status, answer = create(WSGIClient(make_app(cp)))
        assert status == 409, answer
        assert answer["error"]["code"] == "upstream_read_only"
        message = answer["error"]["message"]
        assert "cannot push" in message and "Change apps/web.yaml by a commit" in message
        assert "rtoken" not in message
        assert host.head() == before and cp.repo.head() == before
    finally:
        cp.store.close()


def test_a_bad_commit_upstream_is_reported_with_file_and_line_and_the_app_keeps_its_revision(
    cp: ControlPlane, api: WSGIClient, host: GitHost
) -> None:
    host.commit({"apps/web.yaml": APP.format(name="web", image="nginx:1.25")}, "Add web")
    cp.passes.follow()
    assert revision_of(cp, "web") == 1
    bad = "name: web\nimage: nginx:1.25\nreplicas: many\n"
    sha = host.commit({"apps/web.yaml": bad}, "Break web")
    cp.passes.follow()
    status, state = api.get("/api/state/sync")
    assert status == 200 and state["head"] == sha == state["synced"]
    (error,) = state["errors"]
    assert error["path"] == "apps/web.yaml" and "apps/web.yaml:3" in error["message"], error
    assert revision_of(cp, "web") == 1
    status, app = api.get("/api/apps/web")
    assert status == 200 and app["target_revision"] == "v1", app  # the last good one


def test_a_rewritten_upstream_history_is_refused_by_default(
    cp: ControlPlane, api: WSGIClient, host: GitHost
) -> None:
    kept = host.commit({"apps/web.yaml": APP.format(name="web", image="nginx:1.25")}, "Add web")
    cp.passes.follow()
    rewritten = _force_push(host, APP.format(name="web", image="nginx:1.27"))
    fetched = cp.passes.follow()
    assert fetched is not None and fetched.rewritten and not fetched.moved
    assert cp.repo.head() == kept and revision_of(cp, "web") == 1
    status, state = api.get("/api/state/sync")
    upstream = [e for e in state["errors"] if e["path"] == "upstream"]
    assert upstream and rewritten[:8] in upstream[0]["message"]
    assert "--git-force-push follow" in upstream[0]["message"]
    _, listed = api.get("/api/events?limit=20")
    assert any("rewritten" in e["message"] for e in listed)
    status, answer = api.post("/api/apps/web/update", {"replicas": 2})
    assert status == 409 and answer["error"]["code"] == "upstream_diverged", answer
    cp.passes.follow()  # told once per rewritten head
    _, listed = api.get("/api/events?limit=50")
    assert sum("rewritten" in e["message"] for e in listed) == 1


def test_a_rewritten_upstream_history_is_followed_when_asked(tmp_path: Path, host: GitHost) -> None:
    plane = ControlPlane(upstream_config(tmp_path, host.url, git_force_push="follow"))
    try:
        host.commit({"apps/web.yaml": APP.format(name="web", image="nginx:1.25")}, "Add web")
        plane.passes.follow()
        rewritten = _force_push(host, APP.format(name="web", image="nginx:1.27"))
        fetched = plane.passes.follow()
        assert fetched is not None and fetched.rewritten and fetched.moved
        assert plane.repo.head() == rewritten and revision_of(plane, "web") == 2
        told = [e["message"] for e in plane.views.events(None, 20)]
        assert any("rewritten" in m and "followed" in m for m in told)
    finally:
        plane.store.close()


def _force_push(host: GitHost, text: str) -> str:
    """Rewrite the upstream's last commit with other contents (git commit --amend; push -f)."""
    (host.work / "apps" / "web.yaml").write_text(text)
    git("commit", "-q", "-a", "--amend", "-m", "Rewritten", cwd=host.work)
    git("push", "-q", "--force", "origin", "HEAD:main", cwd=host.work)
    return host.head()


# -- the CP's own Git endpoint, other transports, the record of what runs ---------------


def test_pushes_to_the_cps_own_git_are_refused_naming_the_upstream(
    cp: ControlPlane, served_cp: str, host: GitHost, tmp_path: Path
) -> None:
    from conftest import ADMIN_TOKEN

    wait_for(lambda: cp.repo.head() == host.head(), 10, "the first fetch")
    url = served_cp.replace("http://", f"http://admin:{ADMIN_TOKEN}@") + "/git/apps.git"
    clone = tmp_path / "clone"
    git("clone", "-q", url, str(clone), cwd=tmp_path)  # fetching from the mirror works
    assert (clone / "README.md").read_text() == "deployment files\n"
    (clone / "apps").mkdir()
    (clone / "apps" / "web.yaml").write_text(APP.format(name="web", image="nginx:1.25"))
    git("add", "-A", cwd=clone)
    git("commit", "-q", "-m", "Add web", cwd=clone)
    done = subprocess.run(
        ["git", "push", "origin", "HEAD:main"], cwd=clone, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert f"follows {host.url}" in done.stderr and "push there" in done.stderr, done.stderr
    assert cp.repo.head() == host.head()


def test_git_daemon_and_file_upstreams_are_followed_and_pushed_to(tmp_path: Path) -> None:
    """git:// (git daemon, receive-pack enabled) and file://: no credentials at all."""
    from docklet.cp.http.api import make_app

    root = tmp_path / "served"
    bare = root / "team.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    port = free_port()
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack",
         f"--base-path={root}", "--listen=127.0.0.1", f"--port={port}", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for n, url in enumerate((f"git://127.0.0.1:{port}/team.git", f"file://{bare}")):
            wait_for(lambda u=url: _reachable(u, tmp_path), 10, f"{url} to answer")
            cp = plane(upstream_config(tmp_path / f"cp{n}", url, token=None))
            try:
                cp.passes.follow()
                name = f"web{n}"
                status, view = create(WSGIClient(make_app(cp)), name=name)
                assert status == 201, view
                shown = subprocess.run(
                    ["git", "show", f"main:apps/{name}.yaml"], cwd=bare, capture_output=True
                )
                assert f"name: {name}" in shown.stdout.decode()
            finally:
                cp.store.close()
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def _reachable(url: str, cwd: Path) -> bool:
    return subprocess.run(["git", "ls-remote", url], cwd=cwd, capture_output=True).returncode == 0


def test_outcomes_stay_in_the_mirror_unless_pushed_when_asked(
    tmp_path: Path, host: GitHost
) -> None:
    for push in (False, True):
        cp = plane(upstream_config(tmp_path / str(push), host.url, git_push_outcomes=push))
        try:
            sha = host.commit({f"apps/a{push}.yaml": APP.format(name=f"a{push}", image="x:1")})
            cp.passes.follow()
            cp.repo.record_outcome(f"a{push}", sha, (sha, "docklet: rolled back\n"))
            cp.passes._push_outcome(f"a{push}")
            refs = git("for-each-ref", "--format=%(refname)", cwd=host.repo).split()
            assert (f"refs/docklet/deployed/a{push}" in refs) is push
            assert ("refs/notes/docklet" in refs) is push
        finally:
            cp.store.close()


def test_a_bad_git_url_is_a_usage_error_that_shows_the_forms(tmp_path: Path) -> None:
    import click

    from docklet.common.settings import build

    with pytest.raises(click.UsageError) as refused:
        build(CPConfig, {"data_dir": tmp_path, "git_url": "github.com/team/deploy"})
    assert "--git-url: a Git URL: https://host/org/repo.git" in refused.value.message
    config = build(CPConfig, {"data_dir": tmp_path, "git_url": "git@github.com:team/deploy.git"})
    assert config.upstream


def test_credentials_never_reach_an_answer_or_a_log_line(
    tmp_path: Path, host: GitHost, caplog: pytest.LogCaptureFixture
) -> None:
    """A URL with a password in it, a refused push: neither the token nor the password shows."""
    from docklet.cp.http.api import make_app

    url = host.auth_url(READER)  # the token in the URL itself, as some people write it
    cp = plane(upstream_config(tmp_path, url, token=None))
    try:
        cp.passes.follow()
        status, answer = create(WSGIClient(make_app(cp)))
        assert status == 409 and READER[1] not in json.dumps(answer)
        assert cp.upstream is not None and READER[1] not in cp.upstream.shown
    finally:
        cp.store.close()
    assert READER[1] not in caplog.text


def test_the_cli_explains_a_read_only_upstream(tmp_path: Path, host: GitHost) -> None:
    """`docklet update` against read-only credentials: exit 4, and what to do instead."""
    import sys

    from conftest import ADMIN_TOKEN

    from docklet.cp.server import Server

    host.commit({"apps/web.yaml": APP.format(name="web", image="nginx:1.25")}, "Add web")
    config = upstream_config(tmp_path, host.url, token=READER[1])
    cp = plane(CPConfig(**{**dict(config), "host": "127.0.0.1", "port": 0, "threads": 8}))
    server = Server(cp)
    threading.Thread(target=server.run, daemon=True).start()
    try:
        cp.passes.follow()
        cli = [
            str(Path(sys.executable).parent / "docklet"),
            "--cp",
            f"http://127.0.0.1:{server.port}",
        ]
        done = subprocess.run(
            [*cli, "update", "web", "--replicas", "2", "--detach"],
            capture_output=True,
            text=True,
            env={**os.environ, "DOCKLET_TOKEN": ADMIN_TOKEN},
            timeout=60,
        )
    finally:
        server.stop()
        cp.store.close()
    assert done.returncode == 4, done
    assert "409: the control plane cannot push to" in done.stderr
    assert "Change apps/web.yaml by a commit to main there" in done.stderr


def test_an_unreachable_upstream_is_a_sync_error_until_it_answers(tmp_path: Path) -> None:
    from docklet.common.errors import UpstreamUnavailable

    bare = tmp_path / "later.git"
    cp = plane(upstream_config(tmp_path, f"file://{bare}", token=None))
    try:
        for _ in range(2):  # said once, however many polls fail
            with pytest.raises(UpstreamUnavailable):
                cp.passes.follow()
        (error,) = stored.sync_errors(cp.store)
        assert (
            error["path"] == "upstream"
            and f"cannot fetch main from file://{bare}" in (error["message"])
        )
        assert sum("cannot fetch" in e["message"] for e in cp.views.events(None, 20)) == 1
        git("init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
        cp.passes.follow()
        assert stored.sync_errors(cp.store) == []
    finally:
        cp.store.close()


def test_wrong_signatures_from_one_address_meet_the_auth_limit(
    cp: ControlPlane, api: WSGIClient, host: GitHost
) -> None:
    """A flood of badly signed webhooks is 429 past --auth-failures; a signed one still passes."""
    body, headers = signed("github", payload("github", host.url), secret="guess")
    codes = [
        api.request("POST", "/api/hooks/git", raw=body, headers=headers)[0]
        for _ in range(cp.config.auth_failures + 1)
    ]
    assert codes[:-1] == [403] * cp.config.auth_failures and codes[-1] == 429
    body, headers = signed("github", payload("github", host.url))
    assert api.request("POST", "/api/hooks/git", raw=body, headers=headers)[0] == 202
