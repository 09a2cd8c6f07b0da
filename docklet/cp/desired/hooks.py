"""The bare repository's pre-receive hook: a push to any ref but main, or with an invalid
spec on main, is refused whole.

Git runs it for every push, by HTTP, ssh or path, before any ref moves, with
the pushed objects in quarantine. Only `main` is desired state, and the CP's
own refs (`refs/docklet/*`, `refs/notes/docklet`) are its alone. It reads the
pushed head of `main` the way the sync will (`sync.parse_commit`: YAML with
file:line errors, ignored files, symlinks, duplicates, sizes) and prints each
problem, which Git shows the pusher as `remote:` lines. Installed (re)written
at each CP start, so it always runs the CP's own Python and Docklet.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from docklet.common import defaults

ZERO = "0" * 40
MAX_SHOWN = 50  # problems listed per push; the rest are counted


def install(repo_path: Path) -> None:
    """Write the hook and the receive settings that keep main's history."""
    import pygit2

    import docklet

    source = Path(docklet.__file__).resolve().parent.parent
    hook = repo_path / "hooks" / "pre-receive"
    hook.parent.mkdir(exist_ok=True)
    script = (
        "#!/bin/sh\n"
        "# Written by docklet-cp at start: refuses pushes whose specs do not validate.\n"
        f'PYTHONPATH="{source}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}"'
        " -m docklet.cp.desired.hooks pre-receive\n"
    )
    tmp = hook.with_suffix(".tmp")
    tmp.write_text(script)
    tmp.chmod(0o755)
    os.replace(tmp, hook)
    config = pygit2.Repository(str(repo_path)).config
    # The history is the audit trail: no rewriting it, no deleting the branch, by
    # default; an operator who sets either key in the repo's config keeps the choice.
    for key in ("receive.denyNonFastForwards", "receive.denyDeletes"):
        if key not in config:
            config[key] = True


def ref_problems(lines: list[str]) -> list[str]:
    """Why the push may not move each ref it names (empty: it may move them all).

    Only main is desired state: a tag or another branch here would read as
    deployed while nothing syncs it, so both are refused rather than ignored.
    `refs/docklet/*` and `refs/notes/docklet` are the CP's record of what runs
    and why a revision failed: a push there would forge it.
    """
    from docklet.cp.desired.gitrepo import is_reserved

    branch = f"refs/heads/{defaults.GIT_BRANCH}"
    problems = []
    for line in lines:
        parts = line.split()
        ref = parts[2] if len(parts) == 3 else line.strip()
        if ref == branch:
            continue
        if is_reserved(ref):
            problems.append(
                f"{ref} is the control plane's own record (what runs, why a revision"
                " failed); only the control plane writes it"
            )
        else:
            problems.append(
                f"{ref}: only {branch} is desired state here; Docklet reads no tag or"
                " other branch (keep those in another remote, or push to main)"
            )
    return problems


def spec_problems(lines: list[str], repo_path: Path) -> list[str]:
    """The problems with the pushed head of main (empty: accept)."""
    from docklet.cp.desired.gitrepo import GitRepo
    from docklet.cp.desired.sync import parse_commit

    branch = f"refs/heads/{defaults.GIT_BRANCH}"
    problems: list[str] = []
    for line in lines:
        parts = line.split()
        if len(parts) != 3 or parts[2] != branch or parts[1] == ZERO:
            continue
        parsed = parse_commit(GitRepo.quarantined(repo_path).read(parts[1]))
        problems += [parsed.errors[path] for path in sorted(parsed.errors)]
    return problems


def main() -> None:
    if sys.argv[1:] != ["pre-receive"]:
        sys.exit("usage: python -m docklet.cp.desired.hooks pre-receive  (Git runs it)")
    repo_path = Path(os.environ.get("GIT_DIR", ".")).resolve()
    lines = sys.stdin.read().splitlines()
    refused = ref_problems(lines)
    problems = spec_problems(lines, repo_path)
    if not refused and not problems:
        return
    out = sys.stderr
    for message in refused[:MAX_SHOWN]:
        print(f"docklet: push refused: {message}", file=out)
    if problems:
        print(f"docklet: push refused: {len(problems)} problem(s) in the specs on main:", file=out)
    for message in problems[:MAX_SHOWN]:
        print(f"  {message}", file=out)
    if len(problems) > MAX_SHOWN:
        print(f"  … and {len(problems) - MAX_SHOWN} more", file=out)
    print("docklet: fix them and push again; nothing was changed", file=out)
    sys.exit(1)


if __name__ == "__main__":
    main()
