"""Git over HTTP: `git clone http://cp:8080/git/apps.git`, served by Git's own `git http-backend`.

A WSGI middleware in front of the API: requests under /git/ go to
`git http-backend` (CGI, one process per request), everything else to the
API. HTTP Basic auth, any user name, the API token as password: a `read`
token may clone and fetch, pushing needs `admin`, whichever way the request
spells receive-pack. The credential is checked first: only a failed one
counts against its address and meets the API's limit (auth.failed). The
request body is streamed to the CGI, bounded by Git's own limit
(`max_git_body`, refused in Git's protocol so `git push` shows why), and its
answer streamed back; the Git-Protocol header is passed on, so clients speak
protocol v2. Pushes pass the repository's pre-receive hook (`hooks.py`), and
the CP's repo watcher syncs them at once. In upstream mode (--git-url) the
repository is a mirror: fetches are served, pushes refused with the upstream named.
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
from urllib.parse import parse_qsl

from cheroot.errors import MaxSizeExceeded

from docklet.common.errors import BadRequest, DockletError, Unauthorized
from docklet.common.status import Access
from docklet.common.units import size_text
from docklet.cp.http import auth
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.service.tokens import Caller

log = logging.getLogger(__name__)

PREFIX = "/git/"
REPO_URL_NAME = "apps.git"  # the name people clone; the bare repo on disk is repo.git
CHUNK = 64 * 1024
HEAD_KEPT = 64 * 1024  # of a body: where a push names its refs and capabilities
FLUSH = b"0000"
CGI_GRACE = 30.0  # seconds the CGI has to end once its answer is read

StartResponse = Callable[..., Any]


SERVICES = ("git-upload-pack", "git-receive-pack")


def _needs(environ: dict[str, Any]) -> Access:
    """A push (receive-pack, either its advertisement or the pack itself) needs admin.

    Read as `git http-backend` reads the request: the query decoded
    (`git%2dreceive-pack` is receive-pack), the path as the server decoded it.
    """
    path = environ.get("PATH_INFO", "")
    service = _service(environ.get("QUERY_STRING", ""))
    if service == "git-receive-pack" or "receive-pack" in path.lower():
        return Access.ADMIN
    return Access.READ


def _service(query: str) -> str | None:
    """The `service` a query names, decoded; BadRequest for one Git could read otherwise.

    Git's C code ends a string at a NUL Python keeps, and takes the last of two
    `service`s: a query that could mean two things is refused, not guessed at.
    """
    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("the query is not UTF-8 once decoded") from None
    if any(not (name + value).isprintable() for name, value in pairs):
        raise BadRequest("the query holds characters no Git request has (NUL, newlines)")
    services = [value for name, value in pairs if name == "service"]
    if len(services) > 1:
        raise BadRequest("the query names more than one service")
    if services and services[0] not in SERVICES:
        raise BadRequest(f"{services[0][:64]!r} is not a Git service ({' or '.join(SERVICES)})")
    return services[0] if services else None


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


def _pushes(environ: dict[str, Any]) -> bool:
    """Whether the request is (part of) a push; a malformed one is left to the usual checks."""
    try:
        return _needs(environ) == Access.ADMIN
    except BadRequest:
        return False


def _upstream_refusal(start_response: StartResponse, upstream: str) -> list[bytes]:
    """Upstream mode: the mirror follows the upstream only, so a push here is refused before
    any credential is asked for. Plain text, which `git push` shows as `remote:` lines."""
    body = (
        f"docklet: this control plane follows {upstream} (upstream mode); push there, not"
        " here: its mirror takes commits from the upstream only. Fetching from here works.\n"
    ).encode()
    start_response(
        "403 Forbidden",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]


def _http_backend() -> str | None:
    """The `git-http-backend` program itself: run directly, not by the `git` wrapper, so
    that stopping it stops it (the wrapper's child would outlive the wrapper)."""
    git = shutil.which("git")
    if git is None:
        return None
    found = subprocess.run([git, "--exec-path"], capture_output=True, text=True, check=False)
    program = Path(found.stdout.strip()) / "git-http-backend"
    return str(program) if found.returncode == 0 and os.access(program, os.X_OK) else None


class GitHTTP:
    """WSGI: /git/apps.git/... to `git http-backend`, the rest to `api`."""

    def __init__(self, cp: ControlPlane, api: Callable[..., Iterable[bytes]]) -> None:
        self.cp, self.api = cp, api
        self.git = _http_backend()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if not path.startswith(PREFIX):
            return self.api(environ, start_response)
        if not path.startswith(PREFIX + REPO_URL_NAME + "/"):
            return _error(start_response, 404, "not_found", f"no repository at {path}")
        if self.git is None:
            return _error(start_response, 503, "no_git", "git is not installed on the CP")
        if self.cp.upstream is not None and _pushes(environ):
            return _upstream_refusal(start_response, self.cp.upstream.shown)
        try:
            caller = self._authenticate(environ, _needs(environ))
        except DockletError as exc:
            headers = [("WWW-Authenticate", 'Basic realm="docklet"')] if exc.status == 401 else []
            if "retry_after" in exc.details:
                headers.append(("Retry-After", str(exc.details["retry_after"])))
            return _error(start_response, exc.status, exc.code, exc.message, headers)
        return self._backend(environ, start_response, caller)

    def _authenticate(self, environ: dict[str, Any], needs: Access) -> Caller:
        """The caller, checked before any limit: a valid credential is never refused for
        what others at its address (a NAT, a proxy, the CP's own host) got wrong."""
        secret = _password(environ)
        if not secret:
            # Git's first request has none: the 401 asks for them. Never a 429 here, or
            # Git would not send the credential that may well be valid.
            raise auth.missing(Access.READ)
        try:
            return self.cp.tokens.authenticate(secret, needs)
        except Unauthorized as exc:
            address = environ.get("REMOTE_ADDR") or "unknown"
            auth.failed(self.cp, address, guessed=True)  # 429 past the limit; else counted
            log.warning("auth: git %s from %s refused: %s", environ["PATH_INFO"], address, exc)
            raise

    def _backend(
        self, environ: dict[str, Any], start_response: StartResponse, caller: Caller
    ) -> Iterator[bytes]:
        """Run `git http-backend` for this request: the body streamed in, the answer out."""
        body = _Body(environ, self.cp.config.max_git_body)
        env = _cgi_env(environ, caller, self.cp.config.repo_path, body.limit)
        proc = subprocess.Popen(
            [self.git],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        feeder = threading.Thread(target=body.feed, args=(proc,), daemon=True)
        feeder.start()
        errors: list[bytes] = []
        drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
        drain.start()
        assert proc.stdout is not None
        status, headers = _cgi_headers(proc.stdout)
        if body.over.is_set() and not headers:  # stopped before it said anything
            status, headers = "200 OK", [("Content-Type", _result_type(environ))]
        start_response(status, headers)
        try:
            while chunk := proc.stdout.read1(CHUNK):
                if not body.over.is_set():  # else the CGI's "early EOF": ours replaces it
                    yield chunk
            if body.over.is_set():
                yield self._too_large(environ, body, caller)
        finally:
            proc.stdout.close()
            feeder.join(timeout=5)
            code = _ended(proc)
            drain.join(timeout=5)
            message = b"".join(errors).decode(errors="replace").strip()
            if (code or message) and not body.over.is_set():
                log.info("git http-backend (%s) exited %s: %s", caller.name, code, message[:500])

    def _too_large(self, environ: dict[str, Any], body: _Body, caller: Caller) -> bytes:
        """The refusal of a body over Git's limit, in Git's protocol, and its log line."""
        push = environ["PATH_INFO"].endswith("/git-receive-pack")
        what = "push" if push else "request"
        limit = size_text(body.limit)
        log.warning(
            "git: %s by %s from %s refused: %s%s, over the %s limit for Git (--max-git-body)",
            what,
            caller.name,
            environ.get("REMOTE_ADDR") or "unknown",
            "" if body.length is not None else "at least ",
            size_text(body.received),
            limit,
        )
        return _refusal(
            body.head,
            f"docklet: {what} refused: it is over the control plane's {limit} limit for Git;"
            " push fewer or smaller files at a time, or raise the control plane's"
            " --max-git-body (DOCKLET_MAX_GIT_BODY)",
        )


def _ended(proc: subprocess.Popen[bytes]) -> int:
    """The CGI's exit code, once it has ended: stopped if it has not in CGI_GRACE seconds."""
    try:
        return proc.wait(timeout=CGI_GRACE)
    except subprocess.TimeoutExpired:
        log.warning("git http-backend (pid %s) did not end; stopping it", proc.pid)
        proc.kill()
        return proc.wait()


class _Body:
    """A request body on its way to the CGI: copied as it arrives, never all in memory,
    counted against Git's own limit, its first bytes kept (a push's commands)."""

    def __init__(self, environ: dict[str, Any], limit: int) -> None:
        self.stream = environ["wsgi.input"]
        length = environ.get("CONTENT_LENGTH") or ""
        self.length = int(length) if length.isdigit() else None
        self.limit = limit
        self.head = b""
        self.received = 0  # bytes read so far
        self.over = threading.Event()  # set before the CGI's stdin closes: it then sees EOF

    def feed(self, proc: subprocess.Popen[bytes]) -> None:
        """Copy the body to the CGI; stop it when the body ends short or over the limit.

        Stopped, not left to read on: given a CONTENT_LENGTH, `git http-backend`
        reads until it has that many bytes, spinning on the EOF of a body that
        stopped short, and a worker would wait for it for ever.
        """
        assert proc.stdin is not None
        whole = False
        try:
            if self.length is not None and self.length > self.limit:
                # Said up front: none of it is copied, only its commands read, to answer.
                self.head = self.stream.read(min(HEAD_KEPT, self.length))
                self.received = self.length
                self.over.set()
            else:
                whole = self._copy(proc.stdin)
        except MaxSizeExceeded:  # the server's own cap, met first
            self.over.set()
        except Exception as exc:  # the client left or sent a bad chunk, or the CGI ended
            log.info("git: the request body stopped after %s bytes: %r", self.received, exc)
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            if not whole:
                with contextlib.suppress(OSError):
                    proc.terminate()

    def _copy(self, stdin: IO[bytes]) -> bool:
        """Whether the whole body was copied (False: it stopped short or went over)."""
        left = self.length
        while left is None or left > 0:
            chunk = self.stream.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                return left is None  # the end of a chunked body; else the client left
            self.received += len(chunk)
            if len(self.head) < HEAD_KEPT:
                self.head += chunk[: HEAD_KEPT - len(self.head)]
            if self.received > self.limit:
                self.over.set()
                return False
            stdin.write(chunk)
            if left is not None:
                left -= len(chunk)
        return True


# -- Git's protocol, for the one answer Docklet writes itself -------------------------


def _refusal(head: bytes, message: str) -> bytes:
    """An answer refusing the request with `message`, shown by the Git client.

    A push that asked for side-band (every `git push`) gets `remote:` lines and
    each of its refs `[remote rejected]`; anything else an ERR packet, which
    Git shows as `fatal: remote error: …`.
    """
    refs, capabilities = _commands(head)
    if not capabilities & {"side-band-64k", "side-band"}:
        return _pkt(f"ERR {message}".encode())
    reason = "over the size limit"
    report = _pkt(f"unpack {reason}\n".encode())
    report += b"".join(_pkt(f"ng {ref} {reason}\n".encode()) for ref in refs) + FLUSH
    # 999 bytes a packet: within plain side-band's limit as well as side-band-64k's.
    bands = b"".join(_pkt(b"\1" + report[i : i + 999]) for i in range(0, len(report), 999))
    return _pkt(b"\2" + message.encode() + b"\n") + bands + FLUSH


def _result_type(environ: dict[str, Any]) -> str:
    """The content type `git http-backend` gives the answer to this request."""
    service = environ["PATH_INFO"].rpartition("/")[2]
    return f"application/x-{service}-result" if service in SERVICES else "text/plain"


def _commands(head: bytes) -> tuple[list[str], set[str]]:
    """The refs a push's commands name, and the capabilities the client asked for."""
    refs: list[str] = []
    capabilities: set[str] = set()
    at = 0
    while at + 4 <= len(head):
        try:
            size = int(head[at : at + 4], 16)
        except ValueError:
            break
        if size < 4 or at + size > len(head):  # the flush that ends the commands, or cut
            break
        line, nul, asked = head[at + 4 : at + size].partition(b"\0")
        at += size
        if nul:
            capabilities |= set(asked.decode(errors="replace").split())
        words = line.decode(errors="replace").split()
        if len(words) == 3:  # old, new, ref
            refs.append(words[2])
    return refs, capabilities


def _pkt(payload: bytes) -> bytes:
    return f"{len(payload) + 4:04x}".encode() + payload


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


def _error(
    start_response: StartResponse,
    status: int,
    code: str,
    message: str,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    body = json.dumps({"error": {"code": code, "message": message, "status": status}}).encode()
    reason = {
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        413: "Payload Too Large",
        429: "Too Many Requests",
        503: "Service Unavailable",
    }
    start_response(
        f"{status} {reason.get(status, 'Error')}",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *(headers or []),
        ],
    )
    return [body]
