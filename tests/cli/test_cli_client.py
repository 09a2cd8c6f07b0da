"""The HTTP client the CLI and the agent share: no credential ever leaves for another origin.

A real loopback server answers every request with a redirect to a second real loopback
server, which records what it receives: the token must never arrive there.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from docklet.cli.base import ExitCode
from docklet.cli.main import cli
from docklet.common.errors import APIError
from docklet.wire.client import Client

TOKEN = "dku_redirect-test-0123456789abcdef"


@contextlib.contextmanager
def loopback(
    status: int, headers: dict[str, str], host: str = "127.0.0.1"
) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A server on loopback that answers `status` with `headers` (a `{path}` in a value is
    the request's path) and keeps each request's headers."""
    received: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(dict(self.headers))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value.replace("{path}", self.path))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        do_GET = do_POST = do_DELETE = do_PUT = answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://{host}:{server.server_port}", received
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def redirect_to_elsewhere(status: int) -> Iterator[tuple[str, str, list[dict[str, str]]]]:
    """The CP's URL, answering `status` to another origin; that origin's URL; what it got."""
    # 127.0.0.2 is loopback too, and another origin than 127.0.0.1.
    with (
        loopback(200, {}, host="127.0.0.2") as (elsewhere, received),
        loopback(status, {"Location": elsewhere + "{path}"}) as (cp, _),
    ):
        yield cp, elsewhere, received


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_the_cli_never_sends_its_token_where_a_redirect_points(status: int) -> None:
    with redirect_to_elsewhere(status) as (cp, elsewhere, received):
        result = CliRunner().invoke(cli, ["--cp", cp, "ps"], env={"DOCKLET_TOKEN": TOKEN})
    assert received == []  # not even a request without the token
    assert result.exit_code == ExitCode.SERVER_ERROR, result.output
    err = result.stderr
    assert f"redirects to {elsewhere}/api/state/apps?brief=true (HTTP {status})" in err, err
    assert "does not follow redirects" in err and f"DOCKLET_CP to {elsewhere}" in err
    assert "Traceback" not in err and TOKEN not in err


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_the_agents_client_never_follows_a_redirect_with_its_token(method: str) -> None:
    with redirect_to_elsewhere(307) as (cp, elsewhere, received):
        client = Client(cp, token=TOKEN)
        client.headers["X-Docklet-Join-Token"] = "dkj_secret"
        with pytest.raises(APIError) as refused:
            client.request(method, "/api/nodes/heartbeat", {"node_id": "a"} if method else None)
    assert received == []
    assert refused.value.code == "redirect"
    assert f"{elsewhere}/api/nodes/heartbeat" in refused.value.message


def test_a_redirect_on_the_same_origin_is_refused_too_and_named() -> None:
    # A relative Location (a proxy's login page): named as the absolute URL it means.
    with (
        loopback(302, {"Location": "/login?next={path}"}) as (cp, received),
        pytest.raises(APIError) as refused,
    ):
        Client(cp, token=TOKEN).get("/api/state/apps")
    assert len(received) == 1  # the request itself, and nothing more
    message = refused.value.message
    assert f"redirects to {cp}/login?next=/api/state/apps (HTTP 302)" in message
    assert "DOCKLET_CP to" not in message  # not a control plane's base URL: nothing to suggest


def test_a_redirect_without_a_location_is_still_an_error() -> None:
    with loopback(302, {}) as (cp, _), pytest.raises(APIError) as refused:
        Client(cp, token=TOKEN).get("/api/state/apps")
    assert refused.value.code == "redirect" and "no Location" in refused.value.message
