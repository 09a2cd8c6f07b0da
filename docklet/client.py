"""A small HTTP client for the control plane's API, used by the CLI and the agent."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

from docklet import defaults
from docklet.errors import APIError, CPUnreachable


class Client:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        user: str | None = None,
        timeout: float = defaults.HTTP_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.user = user
        self.timeout = timeout

    def get(self, path: str, timeout: float | None = None) -> Any:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any = None, timeout: float | None = None) -> Any:
        return self.request("POST", path, body, timeout=timeout)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def request(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> Any:
        """The decoded JSON answer; APIError for an error answer, CPUnreachable for none."""
        data = json.dumps(body).encode() if body is not None else None
        try:
            req = urllib.request.Request(self.base_url + path, data=data, method=method)
        except ValueError as exc:
            raise CPUnreachable(f"{self.base_url!r} is not a control plane URL: {exc}") from None
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if self.user:
            req.add_header("X-Docklet-User", self.user)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CPUnreachable(
                f"cannot reach the control plane at {self.base_url}: {reason}"
            ) from None
        except (http.client.HTTPException, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise APIError(
                502,
                "bad_response",
                f"{self.base_url} gave an answer that is not Docklet's JSON"
                f" ({type(exc).__name__}): is it a Docklet control plane?",
            ) from None


def _api_error(exc: urllib.error.HTTPError) -> APIError:
    try:
        error = json.loads(exc.read())["error"]
        return APIError(exc.code, str(error.get("code", "error")), str(error["message"]))
    except (ValueError, KeyError, TypeError, OSError):
        return APIError(exc.code, "http_error", f"HTTP {exc.code} {exc.reason}")
