"""Dashboard sessions and actions over real HTTP: sign-in, the cookie, forged forms, sign-out.

Each test talks to a served CP (cheroot on loopback) as a browser would,
through tests/uiclient.py's Browser: the 303s, Set-Cookie flags and 403
pages are what a person's browser gets.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

import pytest
from conftest import ADMIN_TOKEN
from uiclient import Browser

from docklet.common.status import TokenScope
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.settings import CPConfig


def api(url: str, method: str, path: str, body: Any = None, token: str = ADMIN_TOKEN) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as answer:
        return json.loads(answer.read() or b"null")


def token(url: str, name: str, scope: TokenScope) -> str:
    return api(url, "POST", "/api/tokens", {"name": name, "scope": scope})["token"]


@pytest.fixture
def app_url(served_cp: str) -> str:
    """A served CP with one app, `web` (no agent: it waits for a node, which is enough)."""
    api(served_cp, "POST", "/api/apps", {"name": "web", "image": "busybox:1.36", "replicas": 1})
    return served_cp


def signed_in(url: str, secret: str = ADMIN_TOKEN) -> Browser:
    browser = Browser(url)
    answer = browser.sign_in(secret)
    assert answer.status == 303, answer.text
    return browser


def cookie_flags(answer: Any) -> dict[str, str]:
    [line] = [c for c in answer.cookies if c.startswith("docklet_session=")]
    flags = {}
    for part in line.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        flags[key.lower()] = value
    return flags


def test_a_page_without_a_session_leads_to_the_sign_in_page_and_back(served_cp: str) -> None:
    browser = Browser(served_cp)
    answer = browser.get("/ui/nodes?page=2")
    assert answer.status == 303
    assert answer.location == "/ui/signin?next=" + urllib.parse.quote("/ui/nodes?page=2", safe="")
    form = browser.get(answer.location)
    assert form.status == 200
    assert 'value="/ui/nodes?page=2"' in form.text  # the form leads back where it was going
    signed = browser.sign_in(ADMIN_TOKEN, "/ui/nodes?page=2")
    assert (signed.status, signed.location) == (303, "/ui/nodes?page=2")
    assert browser.get("/ui/nodes").status == 200


def test_the_session_cookie_is_httponly_strict_and_scoped_to_the_dashboard(served_cp: str) -> None:
    answer = Browser(served_cp).sign_in(ADMIN_TOKEN)
    flags = cookie_flags(answer)
    assert "httponly" in flags
    assert flags["samesite"].lower() == "strict"
    assert flags["path"] == "/ui"  # the API never sees it: its Bearer auth is unchanged
    assert 8 * 3600 - 5 <= int(flags["max-age"]) <= 8 * 3600
    assert "secure" not in flags  # plain HTTP on loopback: a Secure cookie would never return
    assert ADMIN_TOKEN not in str(answer.headers)  # the browser keeps a session, not the token


def test_behind_an_https_proxy_the_cookie_is_secure(served_cp: str) -> None:
    browser = Browser(served_cp, extra={"X-Forwarded-Proto": "https"})
    host = urllib.parse.urlsplit(served_cp).netloc
    answer = browser.post(
        "/ui/signin", {"token": ADMIN_TOKEN, "next": "/ui/apps"}, {"Origin": f"https://{host}"}
    )
    assert answer.status == 303
    assert "secure" in cookie_flags(answer)


def test_a_wrong_token_shows_the_form_again_and_counts_toward_the_limit(
    cp: ControlPlane, served_cp: str
) -> None:
    cp.tokens.limiter.limit = 3  # --auth-failures 3, on the running CP
    browser = Browser(served_cp)
    for _ in range(3):
        answer = browser.sign_in("dku_not-a-token")
        assert answer.status == 401
        assert "API token is not valid" in answer.text
        assert 'name="token"' in answer.text  # the form again, to try once more
        assert not answer.cookies
    limited = browser.sign_in("dku_not-a-token")
    assert limited.status == 429
    assert int(limited.headers["Retry-After"]) >= 1
    # One count with the API's: a wrong Bearer token from here is limited too.
    with pytest.raises(urllib.error.HTTPError) as refused:
        api(served_cp, "GET", "/api/state/apps", token="dku_still-wrong")
    assert refused.value.code == 429
    # A token that is one still signs in: the count is strangers' failures.
    assert browser.sign_in(ADMIN_TOKEN).status == 303


def test_a_sign_in_from_another_site_or_too_large_is_refused(served_cp: str) -> None:
    browser = Browser(served_cp)
    forged = browser.post("/ui/signin", {"token": ADMIN_TOKEN}, {"Origin": "https://evil.example"})
    assert forged.status == 403
    assert not forged.cookies
    huge = browser.post("/ui/signin", {"token": "x" * 10_000})
    assert huge.status == 413
    assert "<html" in huge.text and "Traceback" not in huge.text


def test_next_leads_only_to_a_dashboard_page(served_cp: str) -> None:
    for hostile in (
        "https://evil.example/ui/apps",
        "//evil.example",
        "/ui//evil.example",
        "/\\evil.example",
        "/api/tokens",
        "/ui/../api/tokens",
        "javascript:alert(1)",
    ):
        browser = Browser(served_cp)
        assert (
            'value="/ui/apps"'
            in browser.get("/ui/signin?next=" + urllib.parse.quote(hostile, safe="")).text
        )
        assert browser.sign_in(ADMIN_TOKEN, hostile).location == "/ui/apps", hostile


def test_a_session_ends_at_its_expiry(cp: ControlPlane, served_cp: str) -> None:
    browser = signed_in(served_cp)
    assert browser.get("/ui/apps").status == 200
    # Eight hours cannot pass in a test: the session's end is moved to the past instead.
    with cp.store.write() as db:
        db.execute("UPDATE ui_sessions SET expires_at = expires_at - 9 * 3600")
    assert browser.get("/ui/apps").status == 303
    assert cp.sessions.count("test-admin") == 0  # forgotten when next seen


def test_revoking_the_token_ends_its_sessions_at_the_next_request(served_cp: str) -> None:
    reader = token(served_cp, "viewer-1", TokenScope.READ)
    browser = signed_in(served_cp, reader)
    assert browser.get("/ui/apps").status == 200
    api(served_cp, "DELETE", "/api/tokens/viewer-1")
    answer = browser.get("/ui/apps")
    assert answer.status == 303 and answer.location.startswith("/ui/signin")


def test_sessions_survive_a_cp_restart_and_are_capped_per_token(
    cp: ControlPlane, config: CPConfig
) -> None:
    sid, _ = cp.sessions.sign_in(ADMIN_TOKEN, "127.0.0.1")
    for _ in range(25):
        cp.sessions.sign_in(ADMIN_TOKEN, "127.0.0.1")
    assert cp.sessions.count("test-admin") == 20  # the oldest dropped
    newest, _ = cp.sessions.sign_in(ADMIN_TOKEN, "127.0.0.1")
    again = ControlPlane(cp.config)
    try:
        found = again.sessions.find(newest)
        assert found is not None and found.name == "test-admin" and found.admin
        assert again.sessions.find(sid) is None  # among the dropped
    finally:
        again.store.close()


def test_sign_out_ends_the_session_and_forgets_the_cookie(served_cp: str) -> None:
    browser = signed_in(served_cp)
    cookie = browser.cookie
    answer = browser.post("/ui/signout", {"csrf": browser.csrf()})
    assert (answer.status, answer.location) == (303, "/ui/signin")
    assert browser.cookie == ""  # the browser was told to drop it
    replay = Browser(served_cp, cookie=cookie)  # the old cookie, kept by someone
    assert replay.get("/ui/apps").status == 303


def test_forged_action_posts_are_refused(app_url: str) -> None:
    browser = signed_in(app_url)
    good = browser.csrf("/ui/apps/web")
    cases = {
        "no csrf": ({}, {}),
        "a wrong csrf": ({"csrf": good[:-2] + "xx"}, {}),
        "another site": ({"csrf": good}, {"Origin": "https://evil.example"}),
        "an opaque origin": ({"csrf": good}, {"Origin": "null"}),
        "neither Origin nor Referer": ({"csrf": good}, {"Origin": None}),
        "another site's Referer": (
            {"csrf": good},
            {"Origin": None, "Referer": "https://evil.example/ui/apps/web"},
        ),
    }
    for what, (form, headers) in cases.items():
        answer = browser.post("/ui/apps/web/stop", form, headers)
        assert answer.status == 403, what
        assert "<html" in answer.text and "refused" in answer.text, what
    assert api(app_url, "GET", "/api/apps/web")["desired"] == "running"
    # The page's own form, sent with a Referer only (Origin stripped by some proxy): allowed.
    own = browser.post(
        "/ui/apps/web/stop",
        {"csrf": good},
        {"Origin": None, "Referer": f"{app_url}/ui/apps/web"},
    )
    assert own.status == 303
    assert api(app_url, "GET", "/api/apps/web")["desired"] == "stopped"


def test_a_read_token_sees_no_actions_and_cannot_act(app_url: str) -> None:
    reader = token(app_url, "viewer-2", TokenScope.READ)
    browser = signed_in(app_url, reader)
    page = browser.get("/ui/apps/web")
    assert page.status == 200
    assert 'action="/ui/apps/web/stop"' not in page.text
    assert 'action="/ui/apps/web/rollback"' not in page.text
    csrf = browser.csrf("/ui/apps/web")  # its own, valid: still not an admin
    for verb, form in (("stop", {}), ("scale", {"replicas": "3"}), ("rollback", {})):
        answer = browser.post(f"/ui/apps/web/{verb}", {"csrf": csrf, **form})
        assert answer.status == 403, verb
        assert "read token" in answer.text
    assert api(app_url, "GET", "/api/apps/web")["desired"] == "running"
    admin_page = signed_in(app_url).get("/ui/apps/web")
    assert 'action="/ui/apps/web/stop"' in admin_page.text


def test_actions_commit_as_the_signed_in_token_and_say_what_happened(app_url: str) -> None:
    browser = signed_in(app_url)
    csrf = browser.csrf("/ui/apps/web")
    answer = browser.post("/ui/apps/web/scale", {"csrf": csrf, "replicas": "2"})
    assert answer.status == 303 and answer.location.startswith("/ui/apps/web?")
    assert "Scaling web to 2 replicas" in browser.get(answer.location).text
    assert api(app_url, "GET", "/api/apps/web")["replicas"] == 2
    newest = api(app_url, "GET", "/api/apps/web/revisions")[0]
    assert newest["author"].startswith("test-admin")


@pytest.mark.parametrize(
    ("verb", "form", "said"),
    [
        ("scale", {"replicas": "many"}, "replicas must be a whole number"),
        ("scale", {"replicas": "-1"}, "replicas must be a whole number"),
        ("scale", {"replicas": "5000"}, "replicas"),
        ("rollback", {"revision": "v99"}, "has no revision v99"),
        ("rollback", {"revision": "yesterday"}, "is not a revision"),
        ("retry", {}, "no held or failed revision"),
    ],
)
def test_bad_input_to_an_action_is_said_on_the_page(
    app_url: str, verb: str, form: dict[str, str], said: str
) -> None:
    browser = signed_in(app_url)
    answer = browser.post(f"/ui/apps/web/{verb}", {"csrf": browser.csrf("/ui/apps/web"), **form})
    assert answer.status == 303
    page = browser.get(answer.location)
    assert page.status == 200
    assert said in page.text
    assert "error" in page.text


def test_a_flash_in_a_link_someone_else_made_is_not_shown(app_url: str) -> None:
    browser = signed_in(app_url)
    page = browser.get("/ui/apps/web?error=Your+token+expired%2C+sign+in+at+evil.example&sig=0")
    assert page.status == 200
    assert "evil.example" not in page.text


def test_an_action_on_an_unknown_app_is_a_404_page(served_cp: str) -> None:
    browser = signed_in(served_cp)
    csrf = browser.csrf("/ui/apps")
    answer = browser.post("/ui/apps/nope/stop", {"csrf": csrf})
    assert answer.status == 404
    assert "<html" in answer.text


def test_signing_in_again_ends_the_browsers_previous_session(served_cp: str) -> None:
    browser = signed_in(served_cp)
    first = browser.cookie
    assert browser.sign_in(ADMIN_TOKEN).status == 303
    assert browser.cookie != first
    assert Browser(served_cp, cookie=first).get("/ui/apps").status == 303
    assert browser.get("/ui/apps").status == 200


def test_an_action_without_a_session_leads_to_sign_in_and_back_to_the_app(app_url: str) -> None:
    answer = Browser(app_url).post("/ui/apps/web/stop", {"csrf": "whatever"})
    assert answer.status == 303
    assert answer.location == "/ui/signin?next=%2Fui%2Fapps%2Fweb"
    assert api(app_url, "GET", "/api/apps/web")["desired"] == "running"


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/ui/signin", b"token=\xff\xfe&next=\xc0", {}),
        ("/ui/signin", b"token=dku_%00%0a&next=%2Fui%2F%E2%80%AE", {}),
        ("/ui/signin", b"token=" + b"a" * 3000, {"Origin": "http://\xe9vil"}),
        ("/ui/signin", b"token=x", {"Origin": "http://[::1"}),
        ("/ui/signin", b"token=x", {"Cookie": "docklet_session=" + "x" * 5000}),
        ("/ui/signout", b"csrf=\xff", {"Cookie": "docklet_session=\xe9\xe9"}),
        ("/ui/apps/web/scale", b"replicas=%00&csrf=%ff", {"Referer": "::::"}),
        ("/ui/apps/%ff%00/stop", b"", {}),
    ],
)
def test_hostile_forms_get_an_answer_never_a_500(
    app_url: str, path: str, body: bytes, headers: dict[str, str]
) -> None:
    import http.client

    parts = urllib.parse.urlsplit(app_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    sent = {"Content-Type": "application/x-www-form-urlencoded", **headers}
    conn.putrequest("POST", path)
    for name, value in sent.items():
        conn.putheader(name, value.encode("latin-1"))
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    answer = conn.getresponse()
    text = answer.read().decode("utf-8", "replace")
    conn.close()
    assert answer.status in (303, 400, 401, 403, 404, 413), text
    assert "Traceback" not in text
