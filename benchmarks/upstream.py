"""Upstream mode (--git-url): how soon a push upstream is a revision, and what a commit costs.

Starts a real upstream, `git daemon` on loopback (git://, receive-pack on),
and fresh `docklet-cp` processes that follow it. Measures:

- webhook → revision: a commit is pushed upstream with `git push`, then a
  GitHub-signed webhook is posted; the time from the post until the CP's
  synced commit is the pushed one (its revision recorded), polled every 5 ms;
- poll → revision: the same without a webhook, with --git-poll 1 (so about
  half a poll on average: what matters is that it comes);
- the `update` round trip (POST /api/apps/web/update, which commits and, in
  upstream mode, pushes before it answers) in upstream mode and hosted mode.

Prints p50/p95/max of each. No Docker needed (no agent: the apps never run).

Usage: python benchmarks/upstream.py [--pushes 10] [--updates 20]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from controlplane import admin, control_plane

SECRET = "benchmark-webhook-secret"
SPEC = "name: web\nimage: nginx:1.25\nreplicas: 1\nenv:\n  ROUND: '{n}'\n"


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost"}
    env |= {"GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {done.stderr}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream:
    """A bare repository served by `git daemon`, and a person's clone of it."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "team.git"
        git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        port = free_port()
        self.url = f"git://127.0.0.1:{port}/team.git"
        self.daemon = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack",
             f"--base-path={root}", "--listen=127.0.0.1", f"--port={port}", str(root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.work = root / "work"
        for _ in range(100):
            if subprocess.run(["git", "ls-remote", self.url], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        git("clone", "-q", self.url, str(self.work), cwd=root)
        self.rounds = 0
        self.push()

    def push(self) -> str:
        """A new commit of apps/web.yaml, pushed; returns its id."""
        self.rounds += 1
        if self.rounds > 1:
            git("pull", "-q", "--ff-only", "origin", "main", cwd=self.work)
        (self.work / "apps").mkdir(exist_ok=True)
        (self.work / "apps" / "web.yaml").write_text(SPEC.format(n=self.rounds))
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", f"round {self.rounds}", cwd=self.work)
        git("push", "-q", "origin", "HEAD:main", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work).strip()

    def stop(self) -> None:
        self.daemon.terminate()
        self.daemon.wait()


def synced(url: str) -> str | None:
    return admin(url).get("/api/state/sync")["synced"]


def wait_synced(url: str, sha: str, timeout: float = 30.0) -> float:
    """Seconds until the CP has synced `sha` (polled every 5 ms)."""
    started = time.perf_counter()
    while synced(url) != sha:
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"{sha[:8]} was not synced in {timeout}s")
        time.sleep(0.005)
    return time.perf_counter() - started


def webhook(url: str, sha: str) -> None:
    body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
    mac = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": f"sha256={mac}",
    }
    request = urllib.request.Request(f"{url}/api/hooks/git", body, headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 202


def by_webhook(upstream: Upstream, url: str, pushes: int) -> list[float]:
    times = []
    for _ in range(pushes):
        sha = upstream.push()
        started = time.perf_counter()
        webhook(url, sha)
        times.append(time.perf_counter() - started + wait_synced(url, sha))
    return times


def by_polling(upstream: Upstream, url: str, pushes: int) -> list[float]:
    times = []
    for _ in range(pushes):
        sha = upstream.push()
        times.append(wait_synced(url, sha))
    return times


def updates(url: str, count: int) -> list[float]:
    client = admin(url)
    times = []
    for n in range(count):
        started = time.perf_counter()
        client.post("/api/apps/web/update", {"env": {"ROUND": f"u{n}"}})
        times.append(time.perf_counter() - started)
    return times


def show(what: str, times: list[float]) -> None:
    ms = sorted(t * 1000 for t in times)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    print(
        f"{what:<34} n={len(ms):<3} p50 {statistics.median(ms):7.1f} ms"
        f"   p95 {p95:7.1f} ms   max {ms[-1]:7.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=10)
    parser.add_argument("--updates", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="docklet-bench-upstream-") as tmp:
        root = Path(tmp)
        upstream = Upstream(root)
        secret = root / "webhook.secret"
        secret.write_text(SECRET)
        follow = ["--git-url", upstream.url, "--git-webhook-secret-file", str(secret)]
        try:
            with open(root / "cp.log", "ab") as log:
                webhooks = (*follow, "--git-poll", "600")  # only a webhook brings a push soon
                with control_plane(str(root / "a"), *webhooks, log=log) as (url, _):
                    wait_synced(url, git("rev-parse", "main", cwd=upstream.bare).strip())
                    show("webhook → revision (git://)", by_webhook(upstream, url, args.pushes))
                    show("update round trip, upstream mode", updates(url, args.updates))
                polls = (*follow, "--git-poll", "1")
                with control_plane(str(root / "b"), *polls, log=log) as (url, _):
                    show("poll → revision (--git-poll 1)", by_polling(upstream, url, args.pushes))
                with control_plane(str(root / "c"), log=log) as (url, _):
                    admin(url).post("/api/apps", {"name": "web", "image": "nginx:1.25"})
                    show("update round trip, hosted mode", updates(url, args.updates))
        finally:
            upstream.stop()


if __name__ == "__main__":
    main()
