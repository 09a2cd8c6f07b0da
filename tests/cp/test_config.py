"""The control plane's settings: defaults, environment, and nonsense refused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from docklet.cp.server import main
from docklet.cp.settings import CPConfig


@pytest.mark.parametrize(
    "setting,value",
    [
        ("heartbeat_interval", 0),
        ("heartbeat_interval", math.nan),
        ("port", 70000),
        ("threads", 1),
        ("task_lease", -1),
    ],
)
def test_nonsense_settings_are_refused(tmp_path: Path, setting: str, value: float) -> None:
    with pytest.raises(ValueError, match=setting):
        CPConfig(data_dir=tmp_path, **{setting: value})


def test_the_command_says_which_setting_is_wrong(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "--heartbeat-interval", "0"])
    assert result.exit_code == 2
    assert "--heartbeat-interval: Input should be greater than or equal to 0.1" in result.output


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, [], env={"DOCKLET_DATA_DIR": str(tmp_path), "DOCKLET_HEARTBEAT_INTERVAL": "0"}
    )
    assert result.exit_code == 2
    assert "--heartbeat-interval:" in result.output
