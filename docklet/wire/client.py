"""A small HTTP client for the control plane's API, used by the CLI and the agent."""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, TypeAlias
from urllib.parse import urljoin, urlsplit

from docklet.common import defaults
from docklet.common.errors import APIError, CPUnreachable

# What a command needs from an answer: key -> a type, [element] for a list whose every
# element matches, a nested Shape, or a tuple of alternatives (types, or at most one
# Shape and one [element]: `(ROLLOUT, NULL)` is a rollout object or null). A tiny
# checker instead of pydantic, whose import would slow every `docklet` command down.
Shape: TypeAlias = Mapping[str, Any]
NULL = type(None)
NUMBER = (int, float)


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
        self.headers: dict[str, str] = {}  # sent with every request (e.g. a join token)

    def get(self, path: str, timeout: float | None = None, *, expect: Any = None) -> Any:
        return self.request("GET", path, timeout=timeout, expect=expect)

    def post(
        self, path: str, body: Any = None, timeout: float | None = None, *, expect: Any = None
    ) -> Any:
        return self.request("POST", path, body, timeout=timeout, expect=expect)

    def delete(self, path: str, *, expect: Any = None) -> Any:
        return self.request("DELETE", path, expect=expect)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float | None = None,
        *,
        expect: Any = None,
    ) -> Any:
        """The decoded JSON answer; APIError for an error answer, CPUnreachable for none.

        With `expect` (a Shape, or [Shape] for a list of objects) an answer that does
        not match is a 502 "bad_response" APIError naming what is missing.
        """
        answer = self._request(method, path, body, timeout)
        if expect is not None:
            problem = mismatch(answer, expect)
            if problem:
                raise bad_answer(self.base_url + path, problem)
        return answer

    def _request(self, method: str, path: str, body: Any, timeout: float | None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        try:
            req = urllib.request.Request(self.base_url + path, data=data, method=method)
        except ValueError as exc:
            raise self._bad_url(exc) from None
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if self.user:
            req.add_header("X-Docklet-User", self.user)
        for name, value in self.headers.items():
            req.add_header(name, value)
        try:
            with _OPENER.open(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                raise _redirected(req.full_url, path, exc) from None
            raise _api_error(exc) from None
        # A URL that cannot be sent (a port "abc", non-ASCII) is this side's mistake,
        # not a server's answer; it must not read as "not Docklet's JSON".
        except (http.client.InvalidURL, UnicodeEncodeError) as exc:
            raise self._bad_url(exc) from None
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CPUnreachable(
                f"cannot reach the control plane at {self.base_url}: {reason}"
            ) from None
        except http.client.HTTPException as exc:  # something answered, but not HTTP
            raise _not_json(self.base_url, exc) from None
        try:
            return json.loads(raw or b"null")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise _not_json(self.base_url, exc) from None

    def _bad_url(self, exc: Exception) -> CPUnreachable:
        return CPUnreachable(f"{self.base_url!r} is not a control plane URL: {exc}")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Every redirect is an error, never followed: urllib would send the token (and
    any join token) to wherever it points, another host included."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirects)


def _redirected(url: str, path: str, exc: urllib.error.HTTPError) -> APIError:
    """A redirect as an error naming where it points, and the --cp that would go there."""
    location = exc.headers.get("Location")
    if not location:
        return APIError(
            502, "redirect", f"{url} answered HTTP {exc.code}, a redirect with no Location"
        )
    # Shown, not followed: printable, bounded, relative ones made absolute.
    target = "".join(c if " " < c < "\x7f" else "?" for c in urljoin(url, location))[:300]
    hint = ""
    base = target.removesuffix(path)
    if base != target and check_url(base) is None:
        hint = f": if that is your control plane, set --cp / DOCKLET_CP to {base}"
    return APIError(
        502,
        "redirect",
        f"{url} redirects to {target} (HTTP {exc.code}); Docklet does not follow redirects,"
        f" so that your token goes nowhere else{hint}",
    )


def _not_json(base_url: str, exc: Exception) -> APIError:
    return APIError(
        502,
        "bad_response",
        f"{base_url} gave an answer that is not Docklet's JSON"
        f" ({type(exc).__name__}): is it a Docklet control plane?",
    )


def bad_answer(url: str, problem: str) -> APIError:
    """The error for a 2xx answer whose content this Docklet cannot use."""
    return APIError(
        502,
        "bad_response",
        f"{url} gave an answer Docklet cannot read: {problem};"
        " is it a Docklet control plane of a compatible version?",
    )


def mismatch(value: Any, expected: Any, where: str = "") -> str | None:
    """What is wrong with `value` against `expected` (see Shape), or None if nothing."""
    if isinstance(expected, Mapping):
        return _object_mismatch(value, expected, where)
    if isinstance(expected, list):
        return _list_mismatch(value, expected[0], where)
    return _alternatives_mismatch(value, _flat(expected), where)


def _object_mismatch(value: Any, expected: Shape, where: str) -> str | None:
    if not isinstance(value, dict):
        return f"{_name(where)} is {_kind(value)}, not an object"
    for key, sub in expected.items():
        path = f"{where}.{key}" if where else key
        if key not in value:
            return f"missing {path!r}"
        problem = mismatch(value[key], sub, path)
        if problem:
            return problem
    return None


def _list_mismatch(value: Any, element: Any, where: str) -> str | None:
    if not isinstance(value, list):
        return f"{_name(where)} is {_kind(value)}, not a list"
    for i, item in enumerate(value):
        problem = mismatch(item, element, f"{where}[{i}]")
        if problem:
            return problem
    return None


def _alternatives_mismatch(value: Any, alternatives: tuple[Any, ...], where: str) -> str | None:
    types = tuple(t for t in alternatives if isinstance(t, type))
    # JSON true is not a number, though Python's bool is an int.
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return None
    for alternative in alternatives:  # an object or a list: what is wrong inside it
        if isinstance(alternative, Mapping) and isinstance(value, dict):
            return _object_mismatch(value, alternative, where)
        if isinstance(alternative, list) and isinstance(value, list):
            return _list_mismatch(value, alternative[0], where)
    wanted = " or ".join(_wanted(t) for t in alternatives)
    return f"{_name(where)} is {_kind(value)}, not {wanted}"


def _flat(expected: Any) -> tuple[Any, ...]:
    """Alternatives, with alternatives nested in them (`(NUMBER, NULL)`) spread out."""
    if not isinstance(expected, tuple):
        return (expected,)
    return tuple(t for alternative in expected for t in _flat(alternative))


def _wanted(expected: Any) -> str:
    if isinstance(expected, Mapping):
        return "an object"
    if isinstance(expected, list):
        return "a list"
    return _TYPE_NAMES.get(expected, expected.__name__)


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true/false",
    list: "a list",
    dict: "an object",
    NULL: "null",
}


def _name(where: str) -> str:
    return repr(where) if where else "the answer"


def _kind(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def check_url(url: str) -> str | None:
    """What is wrong with a control plane URL, or None: caught before any request."""
    if not url.strip():
        return "it is empty"
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        return f"{url!r} has spaces or characters a URL cannot hold (non-ASCII hosts: use xn--)"
    try:
        parts = urlsplit(url)
    except ValueError:  # a bracket without its pair, or not an IP address inside them
        return f"{url!r} {_BRACKETS}"
    if parts.scheme not in ("http", "https"):
        return f"{url!r} is not an http:// or https:// URL (e.g. http://localhost:8080)"
    problem = _netloc_problem(parts.netloc)
    if problem:
        return f"{url!r} {problem}"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return f"{url!r} has a query or fragment; give the control plane's base URL"
    return None


_BRACKETS = "has brackets that do not hold one IPv6 address (e.g. http://[::1]:8080)"
# Letters, digits, '-' and '_' (Docker's and some LANs' names have them), dot-separated.
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")
_IPV6_HOST = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::(.*))?")


def _netloc_problem(netloc: str) -> str | None:
    """What is wrong with a URL's host and port, or None."""
    if "@" in netloc:  # urllib would send it nowhere, or to the host after the '@'
        return "holds a user name or password; give the token with docklet login or DOCKLET_TOKEN"
    if not netloc or netloc.startswith(":"):
        return "has no host name"
    if "[" in netloc or "]" in netloc:
        bracketed = _IPV6_HOST.fullmatch(netloc)
        if bracketed is None or not _is_ipv6(bracketed[1]):
            return _BRACKETS
        port = bracketed[2]
    else:
        host, _, port = netloc.partition(":")
        if not _HOST_NAME.fullmatch(host):
            return f"has {host!r}, which is not a host name or an IP address"
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        return "has a port that is not a number from 1 to 65535"
    return None


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _api_error(exc: urllib.error.HTTPError) -> APIError:
    try:
        error = json.loads(exc.read())["error"]
        return APIError(exc.code, str(error.get("code", "error")), str(error["message"]))
    except (ValueError, KeyError, TypeError, OSError):
        return APIError(exc.code, "http_error", f"HTTP {exc.code} {exc.reason}")
