"""Git over HTTP: `git clone http://cp:8080/git/apps.git`, served by Git's own `git http-backend`.

A WSGI middleware in front of the API: requests under /git/ go to
`git http-backend` (CGI, one process per request), everything else to the
API. HTTP Basic auth, any user name, the API token as password: a `read`
token may clone and fetch, pushing needs `admin`. Wrong credentials count
against the address like the API's. The request body is streamed to the CGI
and its answer streamed back; the Git-Protocol header is passed on, so
clients speak protocol v2. Pushes pass the repository's pre-receive hook
(`hooks.py`), and the CP's repo watcher syncs them at once.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from docklet.common.errors import DockletError, Unauthorized
from docklet.common.status import Access
from docklet.cp.http import auth
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.service.tokens import Caller

log = logging.getLogger(__name__)

PREFIX = "/git/"
REPO_URL_NAME = "apps.git"  # the name people clone; the bare repo on disk is repo.git
CHUNK = 64 * 1024

StartResponse = Callable[..., Any]


def _needs(environ: dict[str, Any]) -> Access:
    """A push (receive-pack, either its advertisement or the pack itself) needs admin."""
    query = environ.get("QUERY_STRING", "")
    path = environ.get("PATH_INFO", "")
    return Access.ADMIN if "git-receive-pack" in (query + path) else Access.READ


def _password(environ: dict[str, Any]) -> str:
    header = environ.get("HTTP_AUTHORIZATION", "")
    if header.startswith("Bearer "):
        return header[7:].strip()
    if not header.startswith("Basic "):
        return ""
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2]


class GitHTTP:
    """WSGI: /git/apps.git/... to `git http-backend`, the rest to `api`."""

    def __init__(self, cp: ControlPlane, api: Callable[..., Iterable[bytes]]) -> None:
        self.cp, self.api = cp, api
        self.git = shutil.which("git")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if not path.startswith(PREFIX):
            return self.api(environ, start_response)
        address = environ.get("REMOTE_ADDR") or "unknown"
        try:
            if not path.startswith(PREFIX + REPO_URL_NAME + "/"):
                return _error(start_response, 404, "not_found", f"no repository at {path}")
            if self.git is None:
                return _error(start_response, 503, "no_git", "git is not installed on the CP")
            auth.refuse_if_limited(self.cp.tokens.limiter, address)
            secret = _password(environ)
            if not secret:
                raise auth.missing(Access.READ)
            try:
                caller = self.cp.tokens.authenticate(secret, _needs(environ))
            except Unauthorized as exc:
                self.cp.tokens.limiter.fail(address)
                log.warning("auth: git %s from %s refused: %s", path, address, exc)
                raise
        except DockletError as exc:
            headers = [("WWW-Authenticate", 'Basic realm="docklet"')] if exc.status == 401 else []
            if "retry_after" in exc.details:
                headers.append(("Retry-After", str(exc.details["retry_after"])))
            return _error(start_response, exc.status, exc.code, exc.message, headers)
        return self._backend(environ, start_response, caller)

    def _backend(
        self, environ: dict[str, Any], start_response: StartResponse, caller: Caller
    ) -> Iterator[bytes]:
        """Run `git http-backend` for this request: the body streamed in, the answer out."""
        env = _cgi_env(environ, caller, self.cp.config.repo_path, self.cp.config.max_body)
        proc = subprocess.Popen(
            [str(self.git), "http-backend"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        feeder = threading.Thread(
            target=_feed, args=(environ["wsgi.input"], proc, env.get("CONTENT_LENGTH")), daemon=True
        )
        feeder.start()
        errors: list[bytes] = []
        drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
        drain.start()
        assert proc.stdout is not None
        start_response(*_cgi_headers(proc.stdout))
        try:
            while chunk := proc.stdout.read1(CHUNK):
                yield chunk
        finally:
            proc.stdout.close()
            feeder.join(timeout=5)
            code = proc.wait()
            drain.join(timeout=5)
            message = b"".join(errors).decode(errors="replace").strip()
            if code or message:
                log.info("git http-backend (%s) exited %s: %s", caller.name, code, message[:500])


def _cgi_env(environ: dict[str, Any], caller: Caller, repo: Path, max_body: int) -> dict[str, str]:
    """The CGI environment `git http-backend` runs in: the request, the caller, the repo."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_PROJECT_ROOT": str(repo.parent),
        "GIT_HTTP_EXPORT_ALL": "1",
        "GIT_HTTP_MAX_REQUEST_BUFFER": str(max_body),
        "PATH_INFO": "/" + repo.name + environ["PATH_INFO"][len(PREFIX + REPO_URL_NAME) :],
        "REQUEST_METHOD": environ.get("REQUEST_METHOD", "GET"),
        "QUERY_STRING": environ.get("QUERY_STRING", ""),
        "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
        "REMOTE_USER": caller.name,  # also what enables receive-pack
        "REMOTE_ADDR": environ.get("REMOTE_ADDR", ""),
        "GIT_COMMITTER_NAME": caller.name,
        "GIT_COMMITTER_EMAIL": f"{caller.name}@docklet",
    }
    for name in ("CONTENT_LENGTH",):
        if environ.get(name):
            env[name] = environ[name]
    for header, var in (
        ("HTTP_GIT_PROTOCOL", "GIT_PROTOCOL"),  # protocol v2
        ("HTTP_CONTENT_ENCODING", "HTTP_CONTENT_ENCODING"),  # gzip-ed requests
    ):
        if environ.get(header):
            env[var] = environ[header]
    # The hook imports Docklet the way this process does.
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def _cgi_headers(stdout: IO[bytes]) -> tuple[str, list[tuple[str, str]]]:
    """The CGI's status line and headers, read up to the blank line that ends them."""
    status, headers = "200 OK", []
    while True:
        line = stdout.readline()
        if not line or line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").rstrip("\r\n").partition(":")
        if name.lower() == "status":
            status = value.strip()
        else:
            headers.append((name, value.strip()))
    return status, headers


def _feed(stream: Any, proc: subprocess.Popen[bytes], length: str | None) -> None:
    """Copy the request body to the CGI as it arrives, never all of it in memory."""
    assert proc.stdin is not None
    left = int(length) if length and length.isdigit() else None
    try:
        while left is None or left > 0:
            chunk = stream.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                break
            proc.stdin.write(chunk)
            if left is not None:
                left -= len(chunk)
    except (BrokenPipeError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()


def _error(
    start_response: StartResponse,
    status: int,
    code: str,
    message: str,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    body = json.dumps({"error": {"code": code, "message": message, "status": status}}).encode()
    reason = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests"}
    start_response(
        f"{status} {reason.get(status, 'Error')}",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *(headers or []),
        ],
    )
    return [body]
