"""Logging for the entry points: one format, and secrets redacted in one filter."""

from __future__ import annotations

import logging
import re
import sys

# Bearer tokens, and anything that looks like a token=… or "token": … pair.
_SECRET = re.compile(r"(Bearer\s+|token[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9_\-\.]{8,}", re.I)
# Docklet's own secrets (API, node and join tokens) wherever they appear in a line.
_DOCKLET_SECRET = re.compile(r"\bdk[unj]_[A-Za-z0-9_\-]{16,}")


class RedactSecrets(logging.Filter):
    """Agent tokens never reach a log line, whoever logged them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _DOCKLET_SECRET.sub("[redacted]", _SECRET.sub(r"\1[redacted]", message))
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("urllib3", "docker", "watchfiles"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
