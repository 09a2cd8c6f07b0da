"""The dashboard's pages over the real WSGI app (the API behind it), a real SQLite file and
Git repository, signed in with a real session; the live stream over real HTTP.

Each test reads a page as a browser would and checks what a person would see
on it: what the store holds, filtered and paged, escaped, behind sign-in, with
the security headers; the parts a live page fetches; the events it follows.
"""

from __future__ import annotations

import http.client
import io
import sys
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import loglab
import pytest
import yaml
from conftest import ADMIN_TOKEN, wait_for
from loglab import ScriptedAgent
from test_rollout import FAST, step
from test_scheduler import AUTHOR, Agent, put_app

from docklet.common.status import TokenScope
from docklet.cp.http.api import make_app
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.ui import live, pages
from docklet.cp.ui.app import CSP, fragment
from docklet.cp.ui.mount import dashboard
from docklet.cp.ui.pages import Phase

HOSTILE = '<script>alert("x")</script>'


@dataclass
class Page:
    status: int
    headers: dict[str, str]
    text: str


class Browser:
    """The dashboard through WSGI with one session cookie (or none)."""

    def __init__(self, app: Any, session_id: str = "") -> None:
        self.app, self.session_id = app, session_id

    def get(self, path: str, headers: dict[str, str] | None = None) -> Page:
        path, _, query = path.partition("?")
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": "test",
            "SERVER_PORT": "80",
            "HTTP_HOST": "test",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": sys.stderr,
        }
        if self.session_id:
            environ["HTTP_COOKIE"] = f"docklet_session={self.session_id}"
        for name, value in (headers or {}).items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        answered: list[tuple[str, list[tuple[str, str]]]] = []
        body = b"".join(self.app(environ, lambda s, h, *a: answered.append((s, h))))
        status, headers_list = answered[0]
        return Page(int(status.split()[0]), dict(headers_list), body.decode())


@pytest.fixture
def ui(cp: ControlPlane) -> Any:
    return dashboard(cp, make_app(cp))


@pytest.fixture
def admin(cp: ControlPlane, ui: Any) -> Browser:
    session_id, _ = cp.sessions.sign_in(ADMIN_TOKEN, "127.0.0.1")
    return Browser(ui, session_id)


@pytest.fixture
def reader(cp: ControlPlane, ui: Any) -> Browser:
    secret = cp.tokens.create("watcher", TokenScope.READ, "test")
    session_id, _ = cp.sessions.sign_in(secret, "127.0.0.1")
    return Browser(ui, session_id)


def put_apps(cp: ControlPlane, names: list[str], message: str = "Many apps") -> None:
    """One commit adding an app file for each name."""
    files = {f"apps/{n}.yaml": yaml.safe_dump({"name": n, "image": "nginx:1.25"}) for n in names}
    cp.apps.commit(
        lambda old: {**old, **{k: v.encode() for k, v in files.items()}}, message, AUTHOR
    )


def rows(html: str) -> list[str]:
    """The app names an apps page lists, in order."""
    return [
        line.split('href="/ui/apps/')[1].split('"')[0]
        for line in html.splitlines()
        if '<td><a href="/ui/apps/' in line
    ]


# -- what the pages list ----------------------------------------------------------------


def test_the_apps_page_lists_each_app_with_its_revision_state_and_nodes(
    cp: ControlPlane, admin: Browser
) -> None:
    a = Agent(cp, "node-a")
    put_app(cp, "web", replicas=2)
    put_app(cp, "api", replicas=1)
    step(cp, a)
    step(cp, a)
    page = admin.get("/ui/apps")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert rows(page.text) == ["api", "web"]
    assert "2 apps" in page.text
    web = page.text[page.text.index('href="/ui/apps/web"') :]
    web = web[: web.index("</tr>")]
    assert "v1" in web and "running ×2" in web and "2/2" in web
    assert '<a href="/ui/nodes?q=node-a">node-a</a>' in web
    assert 'class="badge b-stable">stable' in web


def test_the_apps_list_filters_by_name_and_status_and_pages_fifty_at_a_time(
    cp: ControlPlane, admin: Browser
) -> None:
    put_apps(cp, [f"app{i:03}" for i in range(120)] + ["other"])
    first = admin.get("/ui/apps")
    assert rows(first.text) == [f"app{i:03}" for i in range(50)]
    assert "page 1 of 3" in first.text and 'href="/ui/apps?page=2"' in first.text
    third = admin.get("/ui/apps?page=3")
    assert rows(third.text) == [*(f"app{i:03}" for i in range(100, 120)), "other"]
    assert admin.get("/ui/apps?page=99").text.count("page 3 of 3") >= 1  # past the end: the last
    found = admin.get("/ui/apps?q=app11")
    assert rows(found.text) == [f"app{i}" for i in range(110, 120)]
    # The filter is kept by the pager's links.
    assert rows(admin.get("/ui/apps?q=app&page=2").text)[0] == "app050"
    assert 'href="/ui/apps?q=app&amp;page=3"' in admin.get("/ui/apps?q=app&page=2").text
    # No node: nothing is deployed, nothing failed, none is rolling.
    assert "121 apps match" in admin.get("/ui/apps?status=stable").text
    failed = admin.get("/ui/apps?status=failed").text
    assert rows(failed) == [] and "No app matches this filter." in failed


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("page=0", "page is a number"),
        ("page=abc", "page is a number"),
        ("status=sideways", "status is one of"),
        ("q=" + "x" * 101, "at most 100"),
    ],
)
def test_a_bad_filter_is_a_400_page_that_says_what_to_fix(
    admin: Browser, query: str, words: str
) -> None:
    page = admin.get(f"/ui/apps?{query}")
    assert page.status == 400
    assert words in page.text and "<html" in page.text and "Traceback" not in page.text


def test_an_apps_page_shows_containers_revisions_rollout_phases_and_events(
    cp: ControlPlane, admin: Browser
) -> None:
    a = Agent(cp, "node-a")
    put_app(cp, "web", replicas=2, rollout=FAST)
    step(cp, a)
    step(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:1.27", rollout=FAST)  # v2: a canary on node-a
    page = admin.get("/ui/apps/web")
    assert page.status == 200
    text = page.text
    assert "<h1>web</h1>" in text
    assert 'class="badge b-rolling_update">rolling_update' in text
    assert "docklet.web.1" in text or "docklet.web.0" in text  # containers, by node
    assert '<h3><a href="/ui/nodes?q=node-a">node-a</a></h3>' in text
    assert "node-a 2/2" in text  # per node: running a wanted revision / there
    assert "Rollout 1: v1 → v2" in text
    assert "Canary</dt><dd>slot" in text and "on node-a" in text
    assert 'class="phase p-current"><span class="name">canary' in text
    assert 'class="phase p-next"><span class="name">verifying' in text
    assert "Healthy by" in text and "Progress by" in text
    assert "Put web" in text  # the revisions' commit messages
    assert "nginx:1.27" in text and "nginx:1.25" in text
    assert "rollout 1 v1→v2: pending → canary" in text  # its events


def test_a_failed_rollout_shows_its_evidence_and_where_it_failed(
    cp: ControlPlane, admin: Browser
) -> None:
    a = Agent(cp, "node-a")
    put_app(cp, "web", replicas=2, rollout=FAST)
    step(cp, a)
    step(cp, a)
    put_app(cp, "web", replicas=2, image="nginx:does-not-exist", rollout=FAST)
    for _ in range(3):
        step(cp, a, fail="pull access denied for nginx")
    rollout = cp.views.rollouts("web")[0]
    assert rollout["status"] in ("rolled_back", "rolling_back")
    text = admin.get("/ui/apps/web").text
    assert "Evidence" in text and "pull access denied for nginx" in text
    assert 'class="phase p-failed"' in text
    assert f"Failed in {rollout['failed_phase']}" in text


def test_phases_are_dated_by_the_rollouts_transitions_and_show_what_is_ahead() -> None:
    rollout = {
        "id": 7,
        "app": "web",
        "status": "verifying",
        "created_at": 100.0,
        "finished_at": None,
        "failed_phase": None,
    }
    said = [
        {"kind": "rollout", "message": "app web: rollout 7 v1→v2: started (v1 → v2)", "at": 100.0},
        {"kind": "rollout", "message": "app web: rollout 7 v1→v2: pending → canary", "at": 101.0},
        {"kind": "rollout", "message": "app web: rollout 6 v0→v1: canary → verifying", "at": 9.0},
        {"kind": "task_done", "message": "app web: pending → canary", "at": 102.0},
        {"kind": "rollout", "message": "app web: rollout 7 v1→v2: canary → verifying", "at": 103.0},
    ]
    assert pages.phases(rollout, said) == [
        Phase("pending", 100.0, "done"),
        Phase("canary", 101.0, "done"),
        Phase("verifying", 103.0, "current"),
        Phase("promoting", None, "next"),
        Phase("stable", None, "next"),
    ]
    failed = {**rollout, "status": "rolled_back", "failed_phase": "verifying", "finished_at": 120.0}
    back = [
        *said,
        {
            "kind": "rollout",
            "message": "app web: rollout 7 v1→v2: verifying → rolling_back: unhealthy",
            "at": 110.0,
        },
    ]
    assert pages.phases(failed, back) == [
        Phase("pending", 100.0, "done"),
        Phase("canary", 101.0, "done"),
        Phase("verifying", 103.0, "failed"),
        Phase("rolling_back", 110.0, "done"),
        Phase("rolled_back", 120.0, "failed"),
    ]


def test_a_rollouts_evidence_shows_exit_code_health_output_and_last_log_lines() -> None:
    rollout = {
        "id": 3,
        "app": "web",
        "revision": "v2",
        "from_revision": "v1",
        "status": "rolled_back",
        "terminal": True,
        "canary_node": "node-a",
        "canary_slot": 1,
        "done": 0,
        "total": 2,
        "deadline": 130.0,
        "progress_deadline": 700.0,
        "reason": "the canary exited with code 3",
        "failed_phase": "verifying",
        "evidence": {
            "error": None,
            "exit_code": 3,
            "health": "curl: (7) Failed to connect",
            "logs": "starting\npanic: <config> missing",
            "phases": [],
        },
        "created_at": 100.0,
        "finished_at": 140.0,
    }
    rollout["phases"] = pages.phases(rollout, [])
    html = fragment("_rollouts.html", rollouts=[rollout], now=200.0)
    assert "Failed in verifying: the canary exited with code 3" in html
    assert "<strong>Exit code:</strong> 3" in html
    assert "<pre>curl: (7) Failed to connect</pre>" in html
    assert "<pre>starting\npanic: &lt;config&gt; missing</pre>" in html
    assert "Canary</dt><dd>slot 1 on node-a" in html
    assert "Healthy by" not in html  # a finished rollout's deadlines are past news


def test_the_nodes_page_shows_status_last_seen_containers_and_docker(
    cp: ControlPlane, admin: Browser
) -> None:
    a = Agent(cp, "node-a")
    put_app(cp, "web", replicas=3)
    step(cp, a)
    text = admin.get("/ui/nodes").text
    row = text[text.index('id="node-node-a"') :]
    row = row[: row.index("</tr>")]
    assert 'class="badge b-online">online' in row
    assert "s ago" in row and "<td>3</td>" in row and ">ok<" in row


def test_the_nodes_page_filters_and_pages_fifty_at_a_time(cp: ControlPlane, admin: Browser) -> None:
    for i in range(60):
        Agent(cp, f"n{i:02}")
    first = admin.get("/ui/nodes").text
    assert "60 nodes · page 1 of 2" in first and 'id="node-n49"' in first
    assert 'id="node-n50"' not in first and 'href="/ui/nodes?page=2"' in first
    assert 'id="node-n59"' in admin.get("/ui/nodes?page=2").text
    found = admin.get("/ui/nodes?q=N5&status=online").text
    assert found.count('<tr id="node-') == 10 and "10 nodes match" in found
    assert "No node matches" in admin.get("/ui/nodes?status=offline").text
    assert admin.get("/ui/nodes?status=gone").status == 400


def test_the_events_page_lists_the_newest_events_and_filters_by_app(
    cp: ControlPlane, admin: Browser
) -> None:
    put_app(cp, "web")
    put_app(cp, "api")
    text = admin.get("/ui/events").text
    assert "app_created" in text and ">web</a>" in text and ">api</a>" in text
    only = admin.get("/ui/events?app=api").text
    assert "<h1>Events of api</h1>" in only and ">web</a>" not in only


# -- safety -----------------------------------------------------------------------------


def test_commit_messages_authors_and_urls_are_escaped(cp: ControlPlane, admin: Browser) -> None:
    text = yaml.safe_dump({"name": "web", "image": "nginx:1.25"}).encode()
    cp.apps.commit(lambda old: {"apps/web.yaml": text}, HOSTILE, 'O\'Hara & "Sons" <e@x>')
    page = admin.get("/ui/apps/web").text
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "O&#39;Hara &amp; &#34;Sons" in page
    missing = admin.get(f"/ui/apps/{urllib.parse.quote(HOSTILE)}")
    assert missing.status == 404 and HOSTILE not in missing.text
    odd = admin.get(f"/ui/events?app={urllib.parse.quote(HOSTILE)}")
    assert odd.status == 200 and HOSTILE not in odd.text


@pytest.mark.parametrize(
    "path", ["/ui/apps", "/ui/apps/web", "/ui/apps/nope", "/ui/nodes", "/ui/parts/apps", "/"]
)
def test_every_answer_carries_the_csp_and_security_headers(
    cp: ControlPlane, admin: Browser, path: str
) -> None:
    put_app(cp, "web")
    page = admin.get(path)
    assert page.headers["Content-Security-Policy"] == CSP
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "same-origin"
    assert page.headers["Cache-Control"] == "no-store"
    assert "<script>" not in page.text and "style=" not in page.text  # the CSP allows neither


def test_an_unknown_app_is_a_404_page(admin: Browser) -> None:
    page = admin.get("/ui/apps/nope")
    assert page.status == 404
    assert "app &#39;nope&#39; does not exist" in page.text and "<html" in page.text
    assert admin.get("/ui/no/such/page").status == 404


def test_without_a_session_every_page_sends_you_to_sign_in_and_back(ui: Any) -> None:
    stranger = Browser(ui)
    for path in ("/ui/apps?q=web", "/ui/apps/web", "/ui/nodes", "/ui/parts/apps", "/ui/live"):
        page = stranger.get(path)
        assert page.status == 303, path
        assert page.headers["Location"] == "/ui/signin?next=" + urllib.parse.quote(path, safe="")
    assert Browser(ui, "forged-session-id").get("/ui/apps").status == 303


def test_the_root_leads_to_the_apps_and_the_api_is_unchanged(ui: Any) -> None:
    page = Browser(ui).get("/")
    assert (page.status, page.headers["Location"].endswith("/ui/apps")) == (303, True)
    health = Browser(ui).get("/api/health")
    assert (health.status, health.text) == (200, '{"status": "ok"}')
    assert "Content-Security-Policy" not in health.headers
    missing = Browser(ui).get("/api/nothing")
    assert missing.status == 404 and '"code": "not_found"' in missing.text


def test_a_read_token_sees_no_action_an_admin_does(
    cp: ControlPlane, admin: Browser, reader: Browser
) -> None:
    a = Agent(cp, "node-a")
    put_app(cp, "web", replicas=1, rollout=FAST)
    step(cp, a)
    step(cp, a)
    put_app(cp, "web", replicas=1, image="nginx:1.27", rollout=FAST)
    for _ in range(5):
        step(cp, a)
    for path in ("/ui/apps/web", "/ui/apps/web/revisions", "/ui/apps/web/summary"):
        assert '<form method="post" action="/ui/apps/web/' not in reader.get(path).text, path
    admin_page = admin.get("/ui/apps/web").text
    for verb in ("stop", "scale", "rollback"):
        assert f'action="/ui/apps/web/{verb}"' in admin_page
    assert 'name="revision" value="v1"' in admin_page


# -- live ---------------------------------------------------------------------------------


def test_a_part_is_only_its_fragment_and_is_rendered_again_only_after_a_change(
    cp: ControlPlane, ui: Any, admin: Browser
) -> None:
    put_app(cp, "web")
    for part in ("summary", "containers", "rollouts", "revisions", "events"):
        page = admin.get(f"/ui/apps/web/{part}")
        assert page.status == 200, part
        assert "<html" not in page.text and "<header" not in page.text, part
    rows_part = admin.get("/ui/parts/apps").text
    assert "<html" not in rows_part and 'href="/ui/apps/web"' in rows_part
    parts: live.Parts = ui.ui.app.config["docklet.parts"]
    before = parts.renders
    for _ in range(5):
        admin.get("/ui/parts/apps")
        admin.get("/ui/apps/web/rollouts")
    assert parts.renders == before  # nothing changed: served as rendered
    put_app(cp, "api")
    assert 'href="/ui/apps/api"' in admin.get("/ui/parts/apps").text
    assert parts.renders > before
    assert admin.get("/ui/apps/nope/rollouts").status == 404


def test_an_open_page_hears_the_events_of_its_app_as_they_happen(
    cp: ControlPlane, ui: Any, served_cp: str
) -> None:
    session_id, _ = cp.sessions.sign_in(ADMIN_TOKEN, "127.0.0.1")
    cp.streams.keepalive = 0.2  # the server notices soon that the page went away
    put_app(cp, "web")
    html = Browser(ui, session_id).get("/ui/apps/web").text
    stream = html.split('data-live="')[1].split('"')[0].replace("&amp;", "&")
    assert stream.startswith("/ui/live?after=") and stream.endswith("&app=web")
    put_app(cp, "api")  # another app's events are not this page's
    put_app(cp, "web", replicas=2)  # after the page was read, before its script listens
    url = urllib.parse.urlsplit(served_cp)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", stream, headers={"Cookie": f"docklet_session={session_id}"})
    answer = conn.getresponse()
    try:
        assert answer.status == 200
        assert answer.getheader("Content-Type").startswith("text/event-stream")
        assert answer.getheader("Content-Security-Policy") == CSP
        assert cp.streams.open_now() == 1  # one of the event streams' slots
        deadline = time.monotonic() + 10
        seen = b""
        while b"revision v2" not in seen and time.monotonic() < deadline:
            seen += answer.fp.readline()
        assert b'"app": "web"' in seen and b'"app": "api"' not in seen
        assert b"app_created" not in seen  # what the page already showed is not sent again
        put_app(cp, "web", replicas=3)  # and what happens while it listens is heard
        while b"revision v3" not in seen and time.monotonic() < deadline:
            seen += answer.fp.readline()
        assert b"revision v3" in seen
    finally:
        conn.close()
    wait_for(lambda: cp.streams.open_now() == 0, what="the stream's slot given back")


def test_the_stylesheet_and_script_are_served_and_nothing_else_is(ui: Any) -> None:
    anyone = Browser(ui)  # the sign-in page needs them too
    css = anyone.get("/ui/static/docklet.css")
    assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
    script = anyone.get("/ui/static/live.js")
    assert script.status == 200 and "EventSource" in script.text
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/ui/static/../app.py", "/ui/static/%2e%2e/app.py", "/ui/static/nope.js"):
        page = anyone.get(path)
        assert page.status == 404 and "import" not in page.text, path


# -- the log pane -------------------------------------------------------------------------


def test_the_log_pane_follows_the_apps_lines_through_the_relay(
    cp: ControlPlane, ui: Any, served_cp: str
) -> None:
    cp.logstreams.keepalive = 0.2  # the server notices soon that the pane was closed
    session_id, _ = cp.sessions.sign_in(ADMIN_TOKEN, "127.0.0.1")
    agent = ScriptedAgent(cp, served_cp, "n1")
    agent.keep_beating()
    try:
        assert agent.open_channel() == 101  # upgraded: batches go up the channel
        wait_for(lambda: cp.channels.has(agent.node_id), 5, "the agent's channel")
        loglab.deploy(cp, [agent], "web", 1)
        page = Browser(ui, session_id).get("/ui/apps/web").text
        assert 'data-logs="/ui/apps/web/logs"' in page and 'id="log-lines"' in page
        url = urllib.parse.urlsplit(served_cp)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        conn.request(
            "GET", "/ui/apps/web/logs", headers={"Cookie": f"docklet_session={session_id}"}
        )
        answer = conn.getresponse()
        try:
            assert answer.status == 200
            assert answer.getheader("Content-Type").startswith("text/event-stream")
            asked = agent.next_frame(kind="logs")
            assert asked["follow"] is True and asked["tail"] == pages.LOG_TAIL
            label = asked["containers"][0]["label"]
            agent.send(asked["stream"], [(label, "<b>listening</b> on :80")])
            seen = b""
            deadline = time.monotonic() + 10
            while b"listening" not in seen and time.monotonic() < deadline:
                seen += answer.fp.readline()
            assert b'"text": "<b>listening</b> on :80"' in seen and label.encode() in seen
        finally:
            loglab.hang_up(conn.sock)
            conn.close()
        wait_for(lambda: cp.logstreams.open_now() == 0, what="the log stream's slot given back")
    finally:
        agent.stop()


def test_a_log_pane_that_cannot_start_says_why(cp: ControlPlane, admin: Browser) -> None:
    put_app(cp, "web")  # no node: no container to follow
    for path, words in (
        ("/ui/apps/web/logs", "no containers"),
        ("/ui/apps/nope/logs", "does not exist"),
    ):
        answer = admin.get(path)
        assert answer.status == 200 and answer.headers["Content-Type"].startswith(
            "text/event-stream"
        )
        assert answer.text.startswith("event: end\ndata: ") and words in answer.text, path
