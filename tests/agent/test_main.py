"""The agent starts the ways people start it: `docklet-agent` and `python -m docklet.agent`."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import BIN


@pytest.mark.parametrize(
    "argv",
    [[str(BIN / "docklet-agent")], [sys.executable, "-m", "docklet.agent"]],
    ids=["console-script", "python-m"],
)
def test_the_entry_points_answer_help(argv: list[str]) -> None:
    done = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Run the Docklet agent on this Docker host." in done.stdout
    assert "--join-token" in done.stdout and "DOCKLET_CP" in done.stdout


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://[::1", "brackets"),
        ("ftp://cp:8080", "not an http:// or https:// URL"),
        ("http://cp:99999", "port"),
    ],
)
def test_a_malformed_cp_url_is_a_usage_error_not_a_traceback(url: str, words: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "DOCKLET_CP": url}
    done = subprocess.run(
        [str(BIN / "docklet-agent")], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("Error:")]
    assert line.startswith("Error: --cp: ") and words in line, line
