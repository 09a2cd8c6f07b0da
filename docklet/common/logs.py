"""Logging for the entry points: text or JSON lines, context fields, secrets redacted.

Context fields say what a line is about (app, revision, rollout, node, task)
and which API request caused it (request_id). Code binds them for a block
with `context(...)`; they live in a `contextvars.ContextVar`, so each thread
(each CP request, each agent task) has its own, and the handler's
`AddContext` filter copies them onto every record logged inside the block.
`RedactSecrets` then redacts the message and the fields alike, and the
formatters redact the traceback text, so no format shows a token.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any, TextIO

# Bearer tokens, and anything that looks like a token=… or "token": … pair.
_SECRET = re.compile(r"(Bearer\s+|token[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9_\-\.]{8,}", re.I)
# Docklet's own secrets (API, node and join tokens) wherever they appear in a line.
_DOCKLET_SECRET = re.compile(r"\bdk[unj]_[A-Za-z0-9_\-]{16,}")

# The context fields, in the order a line shows them.
FIELDS = ("app", "revision", "rollout", "node", "task", "request_id")
FORMATS = ("text", "json")

Value = str | int
_context: ContextVar[Mapping[str, Value] | None] = ContextVar("docklet_log_context", default=None)


# Secret values (`docklet secret set`) this process has held: the CP opens them for a
# lease, the agent receives them. Each is redacted wherever it appears; the newest
# HIDDEN_MAX are kept, and values too short to tell from ordinary words are not.
HIDDEN_MAX = 1000
HIDDEN_MIN = 6
_hidden: dict[str, None] = {}  # ordered: the oldest is dropped first
_hidden_lock = threading.Lock()


def hide(*values: str) -> None:
    """From now on, no line this process logs shows any of `values`."""
    with _hidden_lock:
        for value in values:
            if len(value) >= HIDDEN_MIN:
                _hidden.pop(value, None)
                _hidden[value] = None
        while len(_hidden) > HIDDEN_MAX:
            del _hidden[next(iter(_hidden))]


def redact(text: str) -> str:
    """`text` with every token and hidden value it holds replaced by [redacted]."""
    text = _DOCKLET_SECRET.sub("[redacted]", _SECRET.sub(r"\1[redacted]", text))
    for value in list(_hidden) if _hidden else ():
        if value in text:
            text = text.replace(value, "[redacted]")
    return text


def bind(**fields: Value | None) -> Token[Mapping[str, Value] | None]:
    """Add fields to this thread's context (None: not known, left out); `unbind` the token."""
    unknown = set(fields).difference(FIELDS)
    if unknown:  # a typo would silently log nothing: say so where it is made
        raise ValueError(f"not a log context field: {', '.join(sorted(unknown))}")
    known = {k: v for k, v in fields.items() if v is not None}
    return _context.set({**(_context.get() or {}), **known})


def unbind(token: Token[Mapping[str, Value] | None]) -> None:
    _context.reset(token)


@contextmanager
def context(**fields: Value | None) -> Iterator[None]:
    """Every line logged in this block (in this thread) carries these fields."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def current() -> dict[str, Value]:
    """The context fields a line logged here and now would carry."""
    return dict(_context.get() or {})


class AddContext(logging.Filter):
    """Copies the context fields onto each record (as `record.context`); a field passed
    in `extra=` wins over the bound one."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = current()
        for name in FIELDS:
            value = record.__dict__.get(name)
            if isinstance(value, str | int):
                fields[name] = value
        record.context = fields
        return True


class RedactSecrets(logging.Filter):
    """Agent tokens never reach a log line, whoever logged them, in the message or a field."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        fields = getattr(record, "context", None)
        if fields:
            record.context = {k: redact(v) if isinstance(v, str) else v for k, v in fields.items()}
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [field=value …]`: the context after the message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields: Mapping[str, Value] = getattr(record, "context", None) or {}
        if not fields:
            return line
        shown = " ".join(f"{k}={fields[k]}" for k in FIELDS if k in fields)
        head, newline, rest = line.partition("\n")  # after the message, before a traceback
        return f"{head} [{shown}]{newline}{rest}"

    def formatException(self, ei: Any) -> str:
        return redact(super().formatException(ei))


class JSONFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the context fields, and
    `exception` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "context", None) or {})
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        # json.dumps escapes newlines: a traceback stays on its one line.
        return json.dumps(entry, ensure_ascii=False, default=str)


def handler(log_format: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """The one handler the entry points install: context, then redaction, then the format."""
    if log_format not in FORMATS:
        raise ValueError(f"log format is text or json, not {log_format!r}")
    out = logging.StreamHandler(sys.stderr if stream is None else stream)
    out.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    out.addFilter(AddContext())  # handler filters see every record, whichever logger
    out.addFilter(RedactSecrets())  # after AddContext: the fields are redacted too
    return out


def setup(level: str = "INFO", log_format: str = "text", stream: TextIO | None = None) -> None:
    root = logging.getLogger()
    root.handlers[:] = [handler(log_format.lower(), stream)]
    root.setLevel(level.upper())
    for noisy in ("urllib3", "docker", "watchfiles"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
