"""The dashboard in a real browser: Chromium (Debian's, driven by Playwright) against a real
CP and agent on the real Docker engine.

What a person does: signs in with a token, watches `docklet update` move through
its phases on an open page without reloading it, sees a bad image rolled back with
its evidence, rolls back from the page (and `docklet history` agrees), finds a
read token shows no buttons and a forged POST refused, signs out.

With DOCKLET_SCREENSHOTS=1 the run saves docs/screenshots/*.png (the README shows
them); CI leaves the repository alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RUN_ID, Cluster, wait_for

pytestmark = pytest.mark.docker

CHROMIUM = os.environ.get("DOCKLET_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

# Records the newest rollout as the page shows it each time the page changes: its status
# and its timeline ("canary:done verifying:current promoting:next ..."), what a person
# watching would have seen, however briefly. window.__page marks this page load.
WATCH = """() => {
  window.__page = "first load";
  window.__seen = [];
  const note = () => {
    const rollout = document.querySelector(".rollout.newest");
    if (!rollout) return;
    const badge = rollout.querySelector(".badge").textContent.trim();
    const timeline = Array.from(rollout.querySelectorAll(".phase")).map(
      (p) => p.querySelector(".name").textContent.trim() + ":" + p.className.split("p-")[1]
    ).join(" ");
    const last = window.__seen[window.__seen.length - 1];
    if (!last || last.status !== badge || last.timeline !== timeline)
      window.__seen.push({status: badge, timeline: timeline});
  };
  new MutationObserver(note).observe(document.body,
    {subtree: true, childList: true, characterData: true});
  note();
}"""


@pytest.fixture
def cluster(tmp_path: Path, docker_client: Any, web_image: str) -> Iterator[Cluster]:
    """conftest's cluster, with a CP patient with a busy machine: a browser (Chromium's
    processes, taking screenshots) shares the cores with it, and a request that waits
    for a thread is not the overload this test is about."""
    c = Cluster(tmp_path, docker_client)
    c.cp.args += ["--overload-wait", "30"]
    try:
        c.start_cp()
        c.start_agent()
        c.login()
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"CI needs Chromium at {CHROMIUM} (.ci/run installs chromium)")
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with sync_api.sync_playwright() as playwright:
        # As root (CI, containers) Chromium's sandbox cannot start.
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield chromium
        finally:
            chromium.close()


def shot(page: Any, name: str, *, full_page: bool = True) -> None:
    if os.environ.get("DOCKLET_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


def sign_in(context: Any, url: str, token: str, path: str = "/ui/apps") -> Any:
    page = context.new_page()
    page.goto(url + path)
    assert "/ui/signin?next=" in page.url  # no session yet: the sign-in page first
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(url + path)
    return page


def seen(page: Any) -> list[str]:
    """The newest rollout's statuses, as the page showed them one after another."""
    return [v["status"] for v in snapshots(page)]


def snapshots(page: Any) -> list[dict[str, str]]:
    return page.evaluate("() => window.__seen")


def in_order(wanted: list[str], got: list[str]) -> bool:
    rest = iter(got)
    return all(status in rest for status in wanted)


def newest_rollout(page: Any) -> str:
    return page.inner_text(".rollout.newest")


def history(cluster: Cluster) -> list[dict[str, Any]]:
    result = cluster.docklet("history", "web", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def update_while_watching(cluster: Cluster, page: Any, *args: str, shoot: bool = False) -> Any:
    """`docklet update web ARGS` from the CLI, the page open all along; with `shoot`, a
    screenshot of the page mid-rollout, once it is verifying."""
    done: dict[str, Any] = {}
    cli = threading.Thread(
        target=lambda: done.setdefault("result", cluster.docklet("update", "web", *args)),
    )
    cli.start()
    shot_taken = not shoot
    while cli.is_alive():
        page.wait_for_timeout(100)  # the page keeps running its own script meanwhile
        if not shot_taken and seen(page)[-1:] == ["verifying"]:
            shot(page, "app-rollout")
            shot_taken = True
    cli.join()
    return done["result"]


def test_the_dashboard_in_a_browser(
    cluster: Cluster, browser: Any, web_image: str, web_image_v2: str, registry: str
) -> None:
    url, admin = cluster.url, cluster.client.token
    run = cluster.docklet("run", web_image, "--name", "web", "--replicas", "2")
    assert run.returncode == 0, run.stderr
    wait_for(lambda: cluster.app("web")["status"] == "stable", 60, "web v1 to be stable")

    context = browser.new_context(viewport={"width": 1280, "height": 860})
    # Signed in with the admin token: web is listed, running on its node.
    apps = sign_in(context, url, admin)
    row = apps.locator("table.apps tr", has=apps.locator("a", has_text="web"))
    wait_for(lambda: "2/2" in row.inner_text(), 30, "the apps page to show web 2/2 running")
    assert "node-1" in row.inner_text() and "running" in row.inner_text()
    shot(apps, "apps")

    # `docklet update` while the app's page is open: the phases arrive without a reload.
    page = context.new_page()
    page.goto(f"{url}/ui/apps/web")
    page.evaluate(WATCH)
    update = update_while_watching(cluster, page, "--image", web_image_v2, shoot=True)
    assert update.returncode == 0, update.stdout + update.stderr
    wait_for(lambda: "stable" in seen(page), 20, "the page to show the rollout stable")
    views = snapshots(page)
    # Seen moving: first mid-rollout, then each later phase in turn. The canary lasts as
    # long as one container takes to start, often less than one refresh: the timeline
    # shows it passed by the time verifying is current.
    assert views[0]["status"] in ("pending", "canary", "verifying"), views
    assert in_order(["verifying", "promoting", "stable"], seen(page)), views
    verifying = next(v for v in views if v["status"] == "verifying")
    assert "canary:done" in verifying["timeline"], verifying
    assert "promoting:next stable:next" in verifying["timeline"], verifying
    final = views[-1]["timeline"]
    assert all(f"{p}:done" in final for p in ("canary", "verifying", "promoting", "stable"))
    assert page.evaluate("() => window.__page") == "first load"  # never reloaded

    # A bad image: the page shows the rollback and its evidence.
    missing = f"{registry}/docklet-test/web:does-not-exist-{RUN_ID}"
    failed = update_while_watching(cluster, page, "--image", missing)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    wait_for(lambda: "rolled_back" in seen(page), 30, "the page to show the rollback")
    evidence = newest_rollout(page)
    assert "Evidence" in evidence and "Error" in evidence, evidence
    assert "does-not-exist" in evidence
    page.locator(".rollout.newest").scroll_into_view_if_needed()
    shot(page, "app-rollback", full_page=False)
    assert page.evaluate("() => window.__page") == "first load"

    # Roll back to v1 from the page: the outcome is said, and `docklet history` agrees.
    page.reload()  # the revision table as it is now (v1 is a revision to go back to)
    page.click("button:has-text('Roll back to v1')")
    page.wait_for_url(re.compile(re.escape(f"{url}/ui/apps/web?ok=")))
    assert "Rolling back to v1" in page.inner_text(".flash")
    wait_for(lambda: history(cluster)[0]["status"] == "stable", 60, "the rollback to be stable")
    newest = history(cluster)[0]
    assert newest["revision"] == "v4" and newest["image"] == web_image
    assert newest["message"].startswith("Roll back app web to v1")
    assert newest["author"].startswith("test")  # the signed-in token

    for name in ("nodes", "events"):
        other = context.new_page()
        other.goto(f"{url}/ui/{name}")
        assert other.url == f"{url}/ui/{name}"
        assert "node-1" in other.inner_text("main")
        shot(other, name, full_page=False)

    read_token_sees_nothing_to_do_and_cannot_forge(cluster, browser)
    signing_out_ends_the_session(cluster, browser, context)


def read_token_sees_nothing_to_do_and_cannot_forge(cluster: Cluster, browser: Any) -> None:
    url = cluster.url
    reader = cluster.client.post("/api/tokens", {"name": "looker", "scope": "read"})["token"]
    context = browser.new_context()
    page = sign_in(context, url, reader, "/ui/apps/web")
    assert page.locator("form[action^='/ui/apps/web/']").count() == 0
    assert page.locator("button:has-text('Roll back')").count() == 0
    csrf = page.get_attribute("input[name=csrf]", "value")  # its own, on the sign-out form
    for form in ({}, {"csrf": "forged"}, {"csrf": csrf}):
        # The session's cookie goes with it: the browser's own request context.
        answer = context.request.post(
            f"{url}/ui/apps/web/stop", form=form, headers={"Origin": url}, max_redirects=0
        )
        assert answer.status == 403, form
        assert "refused" in answer.text() or "read token" in answer.text()
    assert cluster.app("web")["desired"] == "running"
    context.close()


def signing_out_ends_the_session(cluster: Cluster, browser: Any, context: Any) -> None:
    url = cluster.url
    page = context.new_page()
    page.goto(f"{url}/ui/apps")
    [cookie] = [c for c in context.cookies() if c["name"] == "docklet_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    page.click("button:has-text('Sign out')")
    page.wait_for_url(f"{url}/ui/signin")
    assert not [c for c in context.cookies() if c["name"] == "docklet_session"]
    page.goto(f"{url}/ui/apps/web")
    assert page.url.startswith(f"{url}/ui/signin?next=")
    # The old cookie, replayed from elsewhere: the session is gone, not only the cookie.
    replay = browser.new_context()
    replay.add_cookies([cookie])
    stale = replay.new_page()
    stale.goto(f"{url}/ui/nodes")
    assert stale.url.startswith(f"{url}/ui/signin?next=")
    replay.close()
    context.close()
