"""Webhooks from the team's Git host (`POST /api/hooks/git`): a push there asks for a fetch now.

The signature is checked before anything of the body is read, each in
constant time: GitHub's `X-Hub-Signature-256` (`sha256=` and the hex
HMAC-SHA256 of the body), Gitea's and Forgejo's `X-Gitea-Signature` /
`X-Forgejo-Signature` (the hex HMAC alone), GitLab's `X-Gitlab-Token` (the
secret itself). Unsigned is 401, signed wrongly 403, both logged without the
body, and nothing is fetched. A signed push for another branch or repository,
and any other event (a ping), is 202 and ignored. The answer never waits for
the fetch: the upstream's watcher thread makes it (cp/controller.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from docklet.common import defaults
from docklet.common.errors import BadRequest, Forbidden, NotFound, TooLarge, Unauthorized
from docklet.cp.desired.upstream import Upstream

log = logging.getLogger(__name__)

PATH = "/api/hooks/git"
MAX_BODY = defaults.WEBHOOK_MAX_BODY
SIGNATURES = ("X-Hub-Signature-256", "X-Gitea-Signature", "X-Forgejo-Signature", "X-Gitlab-Token")
EVENTS = ("X-GitHub-Event", "X-Gitea-Event", "X-Forgejo-Event", "X-Gitlab-Event")
HEADERS = (*SIGNATURES, *EVENTS, "Content-Type")  # what `receive` reads of a request
PUSH_EVENTS = frozenset({"push", "push hook"})  # GitHub, Gitea, Forgejo; GitLab
# Where each forge's push payload names the repository (clone, SSH and web URLs).
_URL_KEYS = ("clone_url", "ssh_url", "git_url", "html_url", "url", "homepage")
_URL_KEYS += ("git_http_url", "git_ssh_url", "web_url")


@dataclass(frozen=True)
class Push:
    """What a verified webhook says: its event, the ref it moved, the repository's URLs."""

    event: str
    ref: str | None
    urls: frozenset[str]


def receive(
    upstream: Upstream | None, headers: Mapping[str, str], body: bytes, address: str
) -> dict[str, Any]:
    """Verify a webhook and, when it is a push to the followed branch, ask for a fetch."""
    if upstream is None:
        raise NotFound(
            "this control plane hosts its repository (no --git-url): push to its /git/ URL;"
            " webhooks are for upstream mode"
        )
    secret = upstream.webhook_secret()
    if secret is None:
        _refused(address, "webhooks are off (no --git-webhook-secret-file)")
        raise Forbidden(
            "webhooks are off: start docklet-cp with --git-webhook-secret-file; until then it"
            f" fetches {upstream.shown} every {upstream.config.git_poll:g}s"
        )
    if len(body) > MAX_BODY:
        _refused(address, f"a body over {MAX_BODY} bytes")
        raise TooLarge(f"a webhook's body is at most {MAX_BODY} bytes")
    forge = verify(secret, headers, body, address)
    push = parse(headers, body)
    ignored = _ignored(push, upstream)
    if ignored:
        log.info("webhook from %s (%s): ignored: %s", address, forge, ignored)
        return {"status": "ignored", "reason": ignored}
    upstream.wake()
    log.info("webhook from %s (%s): %s moved; fetching", address, forge, push.ref)
    return {"status": "accepted", "fetch": "queued"}


def verify(secret: bytes, headers: Mapping[str, str], body: bytes, address: str) -> str:
    """Which forge's signature the webhook carries, checked; 401 unsigned, 403 wrong."""
    mac = hmac.new(secret, body, hashlib.sha256).hexdigest()
    github = headers.get("X-Hub-Signature-256", "")
    gitea = headers.get("X-Gitea-Signature", "") or headers.get("X-Forgejo-Signature", "")
    gitlab = headers.get("X-Gitlab-Token", "")
    if github:
        ok, forge = hmac.compare_digest(github.encode(), f"sha256={mac}".encode()), "github"
    elif gitea:
        ok, forge = hmac.compare_digest(gitea.strip().lower().encode(), mac.encode()), "gitea"
    elif gitlab:
        ok, forge = hmac.compare_digest(gitlab.encode(), secret), "gitlab"
    else:
        _refused(address, "unsigned")
        raise Unauthorized(
            "an unsigned webhook: set its secret to the one in the control plane's"
            " --git-webhook-secret-file (GitHub: X-Hub-Signature-256; Gitea, Forgejo:"
            " X-Gitea-Signature; GitLab: X-Gitlab-Token)"
        )
    if not ok:
        _refused(address, f"a wrong {forge} signature")
        raise Forbidden(
            f"the webhook's {forge} signature does not match: its secret must be the one in"
            " the control plane's --git-webhook-secret-file"
        )
    return forge


def parse(headers: Mapping[str, str], body: bytes) -> Push:
    """The payload of a verified webhook: JSON, or GitHub's form encoding (payload=...)."""
    event = next((headers[h] for h in EVENTS if headers.get(h)), "push").strip().lower()
    try:
        text = body.decode("utf-8")
        if headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            text = parse_qs(text).get("payload", ["{}"])[0]
        data = json.loads(text) if text.strip() else {}
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest(
            "the webhook's payload is not JSON (set its content type to JSON)"
        ) from None
    if not isinstance(data, dict):
        raise BadRequest("the webhook's payload is not a JSON object")
    ref = data.get("ref") if isinstance(data.get("ref"), str) else None
    urls = {
        value
        for part in (data.get("repository"), data.get("project"))
        if isinstance(part, dict)
        for key in _URL_KEYS
        if isinstance(value := part.get(key), str)
    }
    return Push(event, ref, frozenset(urls))


def _ignored(push: Push, upstream: Upstream) -> str:
    """Why a verified webhook asks for no fetch ("" when it does)."""
    if push.event not in PUSH_EVENTS:
        return f"a {push.event[:40]} event, not a push"
    branch = f"refs/heads/{upstream.branch}"
    if push.ref is not None and push.ref != branch:
        return f"a push to {push.ref[:200]}; the control plane follows {branch}"
    ours = same_repo(upstream.url)
    if push.urls and ours not in {same_repo(url) for url in push.urls}:
        return f"a push to another repository; the control plane follows {upstream.shown}"
    return ""


def same_repo(url: str) -> str:
    """`host/path` of a repository URL, whatever its form: https://, ssh://, git@host:path."""
    url = url.strip()
    if "://" not in url and ":" in url.partition("/")[0]:  # scp-like: git@host:org/repo.git
        user_host, _, path = url.partition(":")
        host = user_host.rpartition("@")[2]
    else:
        try:
            parts = urlsplit(url)
            host, path = parts.hostname or "", parts.path
        except ValueError:
            return url
    path = path.strip("/").removesuffix(".git")
    return f"{host.lower()}/{path}"


def _refused(address: str, why: str) -> None:
    log.warning("webhook from %s refused: %s; nothing fetched", address, why)
