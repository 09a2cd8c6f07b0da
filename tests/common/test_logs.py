"""Secrets never reach a log line, whoever logs them."""

from __future__ import annotations

import logging

from docklet.common.logs import RedactSecrets


def render(message: str, *args: object) -> str:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, message, args, None)
    RedactSecrets().filter(record)
    return record.getMessage()


def test_bearer_tokens_are_redacted() -> None:
    line = render("GET /api/agents/n1/tasks Authorization: Bearer %s", "s3cr3t-T0ken_abcdefgh")
    assert "s3cr3t" not in line and "Bearer [redacted]" in line


def test_token_fields_are_redacted_in_json_and_key_value_forms() -> None:
    assert "abcdefgh123" not in render('reply {"node_id": "n1", "token": "abcdefgh123"}')
    assert "abcdefgh123" not in render("register token=abcdefgh123 node=n1")
    assert "node=n1" in render("register token=abcdefgh123 node=n1")


def test_ordinary_lines_are_untouched() -> None:
    assert render("task %s: deploy %s", 7, "docklet.web.1") == "task 7: deploy docklet.web.1"
