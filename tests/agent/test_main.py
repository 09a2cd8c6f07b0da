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
