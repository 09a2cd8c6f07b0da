"""Shell completion: `docklet completion bash|zsh|fish`, click's own, and app names from the CP.

Completing an APP asks the control plane for its apps' names (a brief list)
with a short timeout; whatever goes wrong (no CP, no token, a slow network),
completion offers nothing and the shell goes on.
"""

from __future__ import annotations

import os
from typing import Any

import click
from click.shell_completion import CompletionItem, get_completion_class

from docklet.common import defaults

COMPLETE_TIMEOUT = 1.0  # seconds a <TAB> may wait for the CP
SHELLS = ("bash", "zsh", "fish")
PROG = "docklet"
COMPLETE_VAR = "_DOCKLET_COMPLETE"  # what click's completion scripts set to ask for words


def complete_apps(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """The CP's app names starting with `incomplete`; none when the CP cannot say at once."""
    try:
        names = _app_names(ctx)
    except Exception:  # completion never fails the shell, whatever went wrong
        return []
    return [CompletionItem(n) for n in sorted(names) if n.startswith(incomplete)]


def _app_names(ctx: click.Context) -> list[str]:
    from docklet.cli import credentials
    from docklet.wire.client import Client

    root = ctx.find_root()
    url = root.params.get("cp") or os.environ.get("DOCKLET_CP") or defaults.CP_URL
    client = Client(url, timeout=COMPLETE_TIMEOUT)
    client.token, _ = credentials.stored_token(url)
    apps = client.get("/api/state/apps?brief=true", expect=[{"name": str}])
    return [a["name"] for a in apps]


def script(shell: str, cli: click.Command) -> str:
    """The script that makes `shell` complete docklet's commands, options and app names."""
    cls = get_completion_class(shell)
    if cls is None:  # click knows these three; a shell it does not is a usage error
        raise click.BadParameter(f"{shell!r} is not one of {', '.join(SHELLS)}")
    return str(cls(cli, {}, PROG, COMPLETE_VAR).source())


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the script that makes your shell complete docklet's commands and app names.

    Load it in your shell's start-up file:

    \b
      bash: eval "$(docklet completion bash)"        (in ~/.bashrc)
      zsh:  eval "$(docklet completion zsh)"         (in ~/.zshrc)
      fish: docklet completion fish > ~/.config/fish/completions/docklet.fish

    Example: docklet completion bash >> ~/.bashrc
    """
    click.echo(script(shell, ctx.find_root().command))
