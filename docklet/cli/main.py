"""The `docklet` command: a thin client of the control plane's REST API.

It never touches the database or the repository; every command is one or a
few HTTP calls. Errors are one line on stderr and an exit code from ExitCode.
Each command says which keys of an answer it reads (a client Shape), so an
answer it cannot use is reported as such, and a bug of the CLI stays a bug.

The group and what its commands share are in `base`; each command group is a
module that adds its commands to it, imported here so that all of them join.
"""

from __future__ import annotations

from docklet.cli import apps, auth, completion, events, logs, nodes, rollouts, version
from docklet.cli.base import cli, run_command

# Imported for their commands.
COMMAND_MODULES = (apps, auth, events, logs, nodes, rollouts, version)
cli.add_command(completion.completion)  # knows nothing of the group it completes


def main() -> None:
    run_command(cli)
