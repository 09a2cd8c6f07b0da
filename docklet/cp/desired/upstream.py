"""Upstream mode: the desired-state repository follows a branch on the team's own Git host.

With `--git-url`, the CP's bare repository (repo.git in its data dir) is a
mirror: `fetch` brings the upstream branch in and moves the mirror's `main`
to it (a fast-forward; a rewritten history is followed or refused, as
`--git-force-push` says), and every commit the CP makes itself (`docklet
run`, `update`, ...) is pushed there first (`publish`, called by
`GitRepo.commit` before the mirror's branch moves). A push that lost a race
with someone else's is refused by the host; the new head is fetched and the
edit redone on it. Credentials (a token file, a deploy key) are read at each
use, never logged, and the URL is shown without any it holds.

HTTPS, git:// and file:// go through libgit2 (pygit2); SSH through `git` and
OpenSSH, because pygit2 gives its certificate callback no host key to check
and so accepts any: OpenSSH checks known_hosts (`--git-known-hosts`).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pygit2

from docklet.common import defaults
from docklet.common.errors import (
    RefMoved,
    UpstreamDiverged,
    UpstreamReadOnly,
    UpstreamUnavailable,
)
from docklet.cp.desired.gitrepo import GitRepo
from docklet.cp.settings import CPConfig

log = logging.getLogger(__name__)

TRACKING = "refs/docklet/upstream"  # the upstream branch as last fetched
OUTGOING = "refs/docklet/outgoing"  # the commit being pushed (libgit2 pushes refs, not ids)
# What hosts say when a push lost a race: the branch moved since the commit's parent.
_MOVED = re.compile(r"non-fast-?forward|fetch first|not present locally|stale info", re.I)
# What hosts and libgit2 say when the credentials may read but not write, or none fit.
_REFUSED = re.compile(
    r"\b40[13]\b|auth|permission|denied|forbidden|read.only|not enabled|protected|credential",
    re.I,
)


def shown(url: str) -> str:
    """The URL without the user and password it may carry: what logs and answers show."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "the upstream"
    if parts.scheme and parts.password is not None:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))
    return url


@dataclass(frozen=True)
class Fetched:
    """What a fetch found and did to the mirror's branch."""

    before: str | None  # the mirror's head before
    fetched: str | None  # the upstream branch's head (None: it has none yet)
    head: str | None  # the mirror's head after
    rewritten: bool = False  # the upstream's history no longer holds `before`

    @property
    def moved(self) -> bool:
        return self.head != self.before


class _Callbacks(pygit2.RemoteCallbacks):
    """Credentials for one fetch or push, offered once; and what the host refused."""

    def __init__(self, upstream: Upstream) -> None:
        super().__init__()
        self.upstream = upstream
        self.asked = 0
        self.rejected: dict[str, str] = {}

    def credentials(
        self, url: str, username_from_url: str | None, allowed_types: pygit2.enums.CredentialType
    ) -> pygit2.Username | pygit2.UserPass | pygit2.Keypair:
        self.asked += 1
        if self.asked > 1:  # the host refused what was offered: asking again changes nothing
            raise _AuthRefused("the upstream refused the credentials")
        found = self.upstream.credentials(username_from_url, allowed_types)
        if found is None:
            raise _AuthRefused(
                "the upstream asks for credentials: give --git-token-file or --git-ssh-key"
            )
        return found

    def push_update_reference(self, refname: str, message: str | None) -> None:
        if message:
            self.rejected[refname] = message


class _AuthRefused(Exception):
    """Raised inside libgit2's credentials callback; pygit2 re-raises it to the caller."""


class _Failed(Exception):
    """A fetch or push that did not happen, in the words of libgit2, Git or ssh."""


class Upstream:
    """The team's Git host, followed: fetched into the mirror, pushed to by the CP's commits."""

    def __init__(self, repo: GitRepo, config: CPConfig) -> None:
        self.repo, self.config = repo, config
        self.url, self.branch = config.git_url, config.git_branch
        self.shown = shown(config.git_url)
        self._bell = threading.Event()
        timeout = int(defaults.GIT_TIMEOUT * 1000)
        pygit2.option(pygit2.enums.Option.SET_SERVER_CONNECT_TIMEOUT, timeout)
        pygit2.option(pygit2.enums.Option.SET_SERVER_TIMEOUT, timeout)
        repo.publish = self.publish  # the CP's commits are pushed before the mirror moves

    # -- being told to fetch --------------------------------------------------------

    def wake(self) -> None:
        """Fetch now (a webhook said the upstream moved): the watcher thread does it."""
        self._bell.set()

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Wait for a wake-up, at most `timeout` seconds or until `stop`; whether one came."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._bell.wait(min(left, 0.5)):
                self._bell.clear()
                return True
        return False

    # -- fetching -------------------------------------------------------------------

    def fetch(self) -> Fetched:
        """Fetch the upstream branch and move the mirror's to it (see `_follow`)."""
        with self.repo.writing():
            return self._fetch()

    def _fetch(self) -> Fetched:
        """The same, under the repository's write lock (GitRepo.commit holds it too)."""
        before = self.repo.head()
        fetched = self._fetch_ref()
        if fetched is None or fetched == before:
            return Fetched(before, fetched, before)
        if before is None or self.repo.contains(fetched, before):
            self.repo.move_branch(before, fetched)
            return Fetched(before, fetched, fetched)
        if self.config.git_force_push == "follow":
            self.repo.move_branch(before, fetched)
            return Fetched(before, fetched, fetched, rewritten=True)
        return Fetched(before, fetched, before, rewritten=True)

    def _fetch_ref(self) -> str | None:
        """The upstream branch's head, its objects fetched into the mirror."""
        refs = self.repo.repo.references
        if TRACKING in refs:
            refs.delete(TRACKING)  # a branch deleted upstream then reads as no head
        try:
            self._transfer("fetch", [f"+refs/heads/{self.branch}:{TRACKING}"])
        except _Failed as exc:
            raise UpstreamUnavailable(
                f"cannot fetch {self.branch} from {self.shown}: {exc}"
            ) from None
        ref = refs.get(TRACKING)
        return str(ref.target) if ref is not None else None

    # -- pushing ----------------------------------------------------------------------

    def publish(self, parent: str | None, sha: str, paths: list[str]) -> None:
        """Push the CP's commit `sha` (made on `parent`, changing `paths`) to the upstream branch.

        Called by GitRepo.commit under its lock, before the mirror's branch
        moves: a commit the host did not take is never deployed. RefMoved when
        the upstream moved meanwhile (its new head is fetched first, so the
        edit is redone on it); UpstreamReadOnly when the host refuses the push.
        """
        self.repo.repo.references.create(OUTGOING, pygit2.Oid(hex=sha), force=True)
        try:
            rejected = self._transfer("push", [f"{OUTGOING}:refs/heads/{self.branch}"])
        except _Failed as exc:
            self._push_failed(str(exc), paths)
            raise  # _push_failed always raises; this is for the type checker
        finally:
            self.repo.repo.references.delete(OUTGOING)
        for message in rejected.values():
            self._push_failed(message, paths)
        self.repo.repo.references.create(TRACKING, pygit2.Oid(hex=sha), force=True)
        log.info("upstream %s: pushed %s to %s", self.shown, sha[:8], self.branch)

    # -- the transports ----------------------------------------------------------------

    def _transfer(self, action: str, specs: list[str]) -> dict[str, str]:
        """Fetch or push `specs`: the refs the host refused, in its words; _Failed when
        nothing happened (unreachable, no credentials, not found)."""
        if self.ssh:
            return self._git_cli(action, specs)
        callbacks = _Callbacks(self)
        try:
            remote = self.repo.repo.remotes.create_anonymous(self.url)
            if action == "fetch":
                remote.fetch(specs, callbacks=callbacks)
            else:
                remote.push(specs, callbacks=callbacks)
        except (pygit2.GitError, _AuthRefused, OSError, ValueError) as exc:
            raise _Failed(_said(exc)) from None
        return callbacks.rejected

    @property
    def ssh(self) -> bool:
        """Whether the upstream is reached over SSH (ssh:// or user@host:path)."""
        return self.url.startswith("ssh://") or ("://" not in self.url and "@" in self.url)

    def _git_cli(self, action: str, specs: list[str]) -> dict[str, str]:
        """Over SSH, Git and OpenSSH themselves: libgit2 through pygit2 accepts any host key
        (pygit2 hands its callback no key to check), OpenSSH checks known_hosts."""
        extra = ["--porcelain"] if action == "push" else ["--no-tags", "--no-write-fetch-head"]
        args = ["git", "--git-dir", str(self.repo.path), action, *extra, self.url, *specs]
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": self._ssh_command()}
        try:
            done = subprocess.run(
                args, env=env, capture_output=True, text=True, timeout=2 * defaults.GIT_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            raise _Failed(f"no answer in {2 * defaults.GIT_TIMEOUT:.0f}s") from None
        rejected = {
            fields[1]: fields[2]
            for line in done.stdout.splitlines()
            if line.startswith("!") and len(fields := line.split("\t")) >= 3
        }
        if rejected or done.returncode == 0:
            return rejected
        said = _cli_said(done.stderr or done.stdout)
        if action == "fetch" and "couldn't find remote ref" in said:
            return {}  # the branch does not exist yet: the CP's first commit makes it
        raise _Failed(said)

    def _ssh_command(self) -> str:
        """The ssh Git runs: never a prompt, only known hosts, only the deploy key."""
        command = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
        command += ["-o", f"ConnectTimeout={defaults.GIT_TIMEOUT:.0f}"]
        if self.config.git_ssh_key:
            command += ["-i", str(self.config.git_ssh_key), "-o", "IdentitiesOnly=yes"]
        if self.config.git_known_hosts:
            command += ["-o", f"UserKnownHostsFile={self.config.git_known_hosts}"]
        if "@" not in self.url.split("://")[-1].split("/")[0]:
            command += ["-l", "git"]  # what forges expect when the URL names no user
        return shlex.join(command)

    def _push_failed(self, said: str, paths: list[str]) -> None:
        """Why a push failed, as the error the caller answers with."""
        if _MOVED.search(said):
            log.info("upstream %s: %s moved during a commit; redoing it", self.shown, self.branch)
            fetched = self._fetch()
            if fetched.rewritten and not fetched.moved:
                raise UpstreamDiverged(self.diverged_message(fetched))
            raise RefMoved("the upstream branch moved")
        if _REFUSED.search(said):
            files = " and ".join(paths) or "apps/<app>.yaml"
            raise UpstreamReadOnly(
                f"the control plane cannot push to {self.shown} ({self.branch}): {said}. Its"
                " credentials are read-only or the branch is protected, so docklet run, update,"
                f" stop, start, rm and rollback cannot commit. Change {files} by a commit to"
                f" {self.branch} there (or a pull request) instead; the control plane deploys"
                " it once fetched. Or give it a token or deploy key that may push."
            )
        raise UpstreamUnavailable(f"cannot push to {self.shown} ({self.branch}): {said}")

    def push_outcomes(self, app: str) -> None:
        """Push the record of what runs (--git-push-outcomes): notes, the app's deployed ref."""
        from docklet.cp.desired.gitrepo import NOTES_REF, deployed_ref

        refs = self.repo.repo.references
        specs = [f"+{ref}:{ref}" for ref in (NOTES_REF, deployed_ref(app)) if ref in refs]
        if not specs:
            return
        try:
            rejected = self._transfer("push", specs)
        except _Failed as exc:
            raise UpstreamUnavailable(f"cannot push outcomes to {self.shown}: {exc}") from None
        if rejected:
            said = "; ".join(rejected.values())
            raise UpstreamUnavailable(f"{self.shown} refused the outcomes: {said}")

    # -- what is said of it ------------------------------------------------------------

    def diverged_message(self, fetched: Fetched) -> str:
        before, new = (fetched.before or "")[:8], (fetched.fetched or "")[:8]
        return (
            f"upstream {self.shown} {self.branch} was rewritten (a force-push): its head {new}"
            f" does not contain {before}, which the control plane still deploys"
            " (--git-force-push refuse). Push a commit that contains it (a merge), or restart"
            " the control plane with --git-force-push follow to deploy the new history."
        )

    def credentials(
        self, user_from_url: str | None, allowed: pygit2.enums.CredentialType
    ) -> pygit2.UserPass | None:
        """What to offer an HTTPS host: the token (read now, so a rotated file is used at
        once), or None when there is nothing to offer. (SSH goes through ssh itself.)"""
        config = self.config
        user = user_from_url or config.git_username
        if allowed & pygit2.enums.CredentialType.USERPASS_PLAINTEXT and config.git_token_file:
            return pygit2.UserPass(user, _read_secret(config.git_token_file))
        return None

    def webhook_secret(self) -> bytes | None:
        """The secret webhooks are signed with (None: webhooks are off), read at each one."""
        path = self.config.git_webhook_secret_file
        return _read_secret(path).encode() if path else None


def _read_secret(path: Path) -> str:
    """A secret kept in a file, without the newline editors add."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeError) as exc:
        raise UpstreamUnavailable(f"cannot read {path}: {exc.__class__.__name__}") from None


_TELLING = re.compile(r"fatal:|error:|denied|failed|rejected|couldn't|not found|timed out", re.I)


def _cli_said(output: str) -> str:
    """What git and ssh said that tells why, without ssh's banners of @ signs."""
    lines = [line.strip() for line in output.splitlines() if line.strip().strip("@")]
    telling = [line for line in lines if _TELLING.search(line)] or lines[-1:]
    return _said(RuntimeError(" ".join(telling)))


def _said(exc: BaseException) -> str:
    """An error's words, on one line, without credentials a URL in it may carry."""
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return re.sub(r"(://)[^/@\s]+@", r"\1", text)[:500]
