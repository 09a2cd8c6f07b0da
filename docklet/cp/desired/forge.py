"""Commit statuses on the forge (upstream mode, optional): what became of each commit, shown
where the team reviews it.

With `--git-status-token-file`, each commit the CP syncs gets a status named
`docklet` through the forge's API (GitHub, Gitea/Forgejo, GitLab): failure
with the first problem (file:line) when its specs do not validate; pending
while the rollouts it started run, then success once stable or failure when
rolled back (a first revision deploys without a rollout: success at once).
Statuses are posted by a thread of their own from a bounded queue, so a slow
or unreachable API delays no pass; one that cannot be posted is logged and
dropped (the next commit's status says where things are).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import quote, urlsplit

from docklet.common import defaults
from docklet.cp.settings import CPConfig

log = logging.getLogger(__name__)

CONTEXT = "docklet"  # the status's name on the forge
QUEUED = 1000  # statuses waiting to be posted at most; more are dropped (and logged)
DESCRIPTION_MAX = 140  # GitHub's limit; the others take more


class State(StrEnum):
    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True)
class Status:
    sha: str
    state: State
    description: str


@dataclass(frozen=True)
class Call:
    """One request to the forge's API, as data (what a test compares exactly)."""

    url: str
    headers: dict[str, str]
    body: dict[str, str]


def kind_of(url: str) -> str:
    """The forge a repository URL is on, guessed from its host (--git-forge says otherwise)."""
    host = _host_and_path(url)[0]
    if "github" in host:
        return "github"
    return "gitlab" if "gitlab" in host else "gitea"


def api_of(kind: str, url: str) -> str:
    """The forge's API root for a repository URL (--git-status-api says otherwise)."""
    host, _ = _host_and_path(url)
    scheme = "http" if url.startswith("http://") else "https"
    if kind == "github":
        return "https://api.github.com" if host == "github.com" else f"{scheme}://{host}/api/v3"
    return f"{scheme}://{host}/api/v4" if kind == "gitlab" else f"{scheme}://{host}/api/v1"


def call(kind: str, api: str, project: str, token: str, status: Status) -> Call:
    """The request that sets `status` on the forge `kind` (a pure builder)."""
    text = status.description[:DESCRIPTION_MAX]
    json_type = {"Content-Type": "application/json"}
    if kind == "gitlab":
        state = "failed" if status.state == State.FAILURE else str(status.state)
        return Call(
            f"{api}/projects/{quote(project, safe='')}/statuses/{status.sha}",
            {"PRIVATE-TOKEN": token, **json_type},
            {"state": state, "name": CONTEXT, "description": text},
        )
    scheme = "Bearer" if kind == "github" else "token"
    return Call(
        f"{api}/repos/{project}/statuses/{status.sha}",
        {"Authorization": f"{scheme} {token}", "Accept": "application/json", **json_type},
        {"state": str(status.state), "context": CONTEXT, "description": text},
    )


class Forge:
    """Posts commit statuses to the forge's API, from a queue, on a thread of its own."""

    def __init__(self, config: CPConfig) -> None:
        self.kind = config.git_forge.replace("forgejo", "gitea") or kind_of(config.git_url)
        self.api = (config.git_status_api or api_of(self.kind, config.git_url)).rstrip("/")
        self.project = _host_and_path(config.git_url)[1]
        assert config.git_status_token_file is not None
        self.token_file: Path = config.git_status_token_file
        self._queue: queue.Queue[Status] = queue.Queue(maxsize=QUEUED)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def report(self, sha: str, state: State, description: str) -> None:
        """Queue a status for commit `sha`; never waits."""
        try:
            self._queue.put_nowait(Status(sha, state, " ".join(description.split())))
        except queue.Full:
            log.warning("forge: %d statuses waiting; %s of %s dropped", QUEUED, state, sha[:8])
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="forge")
                self._thread.start()

    def _run(self) -> None:
        while True:
            status = self._queue.get()
            try:
                self.post(status)
            except Exception as exc:  # the API is down or refuses: the next status may pass
                log.warning(
                    "forge: status %s of %s not posted: %s", status.state, status.sha[:8], exc
                )

    def post(self, status: Status) -> None:
        """Post one status now (the thread's work; tests call it directly too)."""
        token = self.token_file.read_text(encoding="utf-8").strip()
        made = call(self.kind, self.api, self.project, token, status)
        request = urllib.request.Request(
            made.url, json.dumps(made.body).encode(), made.headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=defaults.GIT_TIMEOUT) as answer:
                answer.read(64 * 1024)
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{made.url} answered {exc.code}") from None
        log.info("forge: %s is %s (%s)", status.sha[:8], status.state, status.description)


def _host_and_path(url: str) -> tuple[str, str]:
    """`(host, org/repo)` of a repository URL: https://, ssh://, git@host:org/repo.git."""
    url = url.strip()
    if "://" not in url and ":" in url.partition("/")[0]:
        user_host, _, path = url.partition(":")
        host = user_host.rpartition("@")[2]
    else:
        parts = urlsplit(url)
        host, path = parts.hostname or "", parts.path
    return host.lower(), path.strip("/").removesuffix(".git")
