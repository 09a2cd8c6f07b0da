"""A small browser for the dashboard's tests: real HTTP, one cookie jar, no redirects followed.

`Browser(url)` keeps the session cookie the CP sets, sends the page's own
`Origin` on a POST (as a browser does) unless told otherwise, and returns
each answer as it came (status, headers, text), so a test sees the 303s and
the Set-Cookie flags themselves. `csrf(html)` reads a page's CSRF field.
"""

from __future__ import annotations

import http.client
import re
import urllib.parse
from dataclasses import dataclass, field
from email.message import Message

COOKIE = "docklet_session"
_CSRF = re.compile(r'name="csrf" value="([^"]*)"')


@dataclass
class Answer:
    status: int
    headers: Message
    text: str

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")

    @property
    def cookies(self) -> list[str]:
        return self.headers.get_all("Set-Cookie") or []


@dataclass
class Browser:
    url: str
    cookie: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # headers on every request

    @property
    def origin(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return self.request("GET", path, None, headers)

    def post(
        self, path: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> Answer:
        """A form POST; `headers` may replace the Origin (None: send none)."""
        sent = {"Origin": self.origin, **(headers or {})}
        return self.request("POST", path, urllib.parse.urlencode(form or {}), sent)

    def request(
        self, method: str, path: str, body: str | None, headers: dict[str, str | None] | None
    ) -> Answer:
        parts = urllib.parse.urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        sent = {**self.extra, **(headers or {})}
        if self.cookie:
            sent.setdefault("Cookie", f"{COOKIE}={self.cookie}")
        if body is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body, {k: v for k, v in sent.items() if v is not None})
            answer = conn.getresponse()
            result = Answer(answer.status, answer.msg, answer.read().decode())
        finally:
            conn.close()
        self._keep(result)
        return result

    def _keep(self, answer: Answer) -> None:
        for line in answer.cookies:
            name, _, rest = line.partition("=")
            if name.strip() == COOKIE:
                value = rest.split(";")[0]
                gone = "max-age=0" in line.lower() or not value.strip('"')
                self.cookie = "" if gone else value

    def sign_in(self, token: str, next_path: str = "/ui/apps") -> Answer:
        return self.post("/ui/signin", {"token": token, "next": next_path})

    def csrf(self, path: str = "/ui/apps") -> str:
        """The CSRF token a page of this session carries in its forms."""
        return csrf(self.get(path).text)


def csrf(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "the page has no CSRF field"
    return match.group(1)
