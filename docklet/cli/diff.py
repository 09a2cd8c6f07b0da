"""`docklet diff` and `docklet apply`: see what spec files would do, then commit one.

`diff` sends a spec file, or a working tree's whole `apps/`, to the CP's plan
(`POST /api/plan`: the checks a push gets, then the controller's own decision
on the cluster as it is, applied nowhere) and prints, per app, what would
change; it exits 0 (nothing), 1 (changes) or 4 (invalid), so CI can run it on
a pull request. `apply -f FILE` shows the same plan for one file and commits
it (`POST /api/apply`) as `docklet update` commits, following it with --wait.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from docklet.cli.base import (
    Context,
    ExitCode,
    Failed,
    check_timeout,
    cli,
    json_option,
    pass_ctx,
    print_json,
)
from docklet.cli.monitor import ROLLOUT_WAIT, changed_app
from docklet.common import defaults
from docklet.common.units import size_text
from docklet.wire.client import NULL, Shape

ERROR: Shape = {"file": str, "line": (int, NULL), "message": str}
APP_PLAN: Shape = {
    "app": str,
    "change": str,
    "fields": [{"field": str}],
    "revision": (str, NULL),
    "rollout": bool,
    "nodes": [str],
    "slots": [{"slot": int, "node": (str, NULL), "action": str}],
    "note": (str, NULL),
}
PLAN: Shape = {"valid": bool, "errors": [ERROR], "apps": [APP_PLAN]}
MARKS = {"create": ("+", "green"), "update": ("~", "yellow"), "remove": ("-", "red")}

Files = dict[str, str | None]  # path in the repository → text (None: found, not sendable)


@cli.command()
@click.argument("target", default=".", type=click.Path(exists=True, path_type=Path))
@json_option
@pass_ctx
def diff(ctx: Context, target: Path, as_json: bool) -> None:
    """Show what a spec file, or a working tree of the repository, would change.

    TARGET is a directory (default: the current one) holding the repository's
    apps/, taken as the whole of it (an app without a file there would be
    removed), or one spec file (only its app changes). Per app: the fields
    (old → new), the revision it would become, whether it rolls out or
    applies directly, and the nodes and slots it touches. Exits 0 when
    nothing would change, 1 when something would, 4 when a file does not
    validate (file:line, as a push would be refused).

    Example: docklet diff   (in a clone of http://cp:8080/git/apps.git)
    """
    if target.is_dir():
        files, local = tree_files(target)
        complete = True
    else:
        files, local = one_file(target)
        complete = False
    answer = plan(ctx, files, complete, local)
    if as_json:
        print_json(answer)
    else:
        show(answer)
    if not answer["valid"]:
        raise Failed(_invalid(answer), ExitCode.DIFF_INVALID)
    if any(a["change"] != "none" for a in answer["apps"]):
        click.get_current_context().exit(ExitCode.DIFF_CHANGES)


@cli.command()
@click.option(
    "-f",
    "--file",
    "file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The spec file to commit (as apps/<its name>).",
)
@click.option("--wait", is_flag=True, help="Follow the change until it runs, as run does.")
@click.option(
    "--timeout",
    type=click.FloatRange(0, 86400),
    default=ROLLOUT_WAIT,
    show_default=True,
    help="Seconds --wait waits for the app to run or its rollout to finish.",
)
@json_option
@pass_ctx
def apply(ctx: Context, file: Path, wait: bool, timeout: float, as_json: bool) -> None:
    """Commit a spec file you wrote, through the checks a push gets.

    Shows what it changes (as docklet diff FILE does), then commits it as
    apps/<file name> with you as the author; an invalid file exits 4 with
    its file:line errors and commits nothing. With --wait, follows the
    change as run and update do.

    Example: docklet apply -f web.yaml --wait
    """
    check_timeout(timeout)
    files, local = one_file(file)
    answer = plan(ctx, files, False, local)
    if not as_json:
        show(answer)
    if not answer["valid"]:
        if as_json:
            print_json(answer)
        raise Failed(_invalid(answer) + "; nothing was committed", ExitCode.DIFF_INVALID)
    (path, text), name = next(iter(files.items())), _app_name(file.name)
    changed_app(
        ctx,
        name,
        "/api/apply",
        {"file": path, "text": text},
        said=f"✔ Committed {path}",
        detach=not wait,
        timeout=timeout,
        as_json=as_json,
    )


def plan(ctx: Context, files: Files, complete: bool, local: list[dict[str, Any]]) -> Any:
    """The CP's plan of `files`, with what could not even be sent (`local`) among its errors."""
    answer = ctx.call("POST", "/api/plan", PLAN, {"files": files, "complete": complete})
    if local:
        mine = {e["file"] for e in local}  # the CP only knows these were not sent
        errors = [e for e in answer["errors"] if e["file"] not in mine] + local
        answer = {**answer, "valid": False, "errors": sorted(errors, key=_where)}
    return answer


# -- reading files -------------------------------------------------------------------


def tree_files(root: Path) -> tuple[Files, list[dict[str, Any]]]:
    """The working tree's apps/ as a push would carry it; what cannot be sent is a local error."""
    apps_dir = root / defaults.APPS_DIR
    if not apps_dir.is_dir():
        if root.name != defaults.APPS_DIR:
            raise click.UsageError(
                f"{root} has no {defaults.APPS_DIR}/ directory: run docklet diff in a clone of"
                " the desired-state repository, or name one spec file"
            )
        apps_dir = root
    entries = sorted(apps_dir.iterdir())
    if len(entries) > defaults.MAX_APP_FILES:
        raise click.UsageError(
            f"{apps_dir} holds {len(entries)} entries; a commit may hold {defaults.MAX_APP_FILES}"
        )
    files: Files = {}
    local: list[dict[str, Any]] = []
    for entry in entries:
        _read_entry(entry, files, local, in_tree=True)
    return files, local


def one_file(file: Path) -> tuple[Files, list[dict[str, Any]]]:
    """One spec file, as apps/<its name> in the repository."""
    files: Files = {}
    local: list[dict[str, Any]] = []
    _read_entry(file, files, local, in_tree=False)
    if not files and local:
        raise Failed(f"{local[0]['file']}: {local[0]['message']}", ExitCode.DIFF_INVALID)
    return files, local


def _read_entry(entry: Path, files: Files, local: list[dict[str, Any]], *, in_tree: bool) -> None:
    """Add the entry to `files`, or say in `local` why it cannot be (words as the CP's sync)."""
    name = entry.name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        local.append(_local(f"apps/{shown}", "ignored: the file name is not UTF-8; rename it"))
        return
    path = f"{defaults.APPS_DIR}/{name}"
    if not name.isprintable():
        local.append(_local(path, "ignored: the file name holds control characters; rename it"))
    elif in_tree and entry.is_symlink():
        local.append(_local(path, "refused: a symbolic link; commit the spec itself"))
        files[path] = None
    elif entry.is_dir():
        local.append(
            _local(path, "ignored: specs are read from apps/ itself, not its subdirectories")
        )
    else:
        _read_file(entry, path, files, local)


def _read_file(entry: Path, path: str, files: Files, local: list[dict[str, Any]]) -> None:
    try:
        size = entry.stat().st_size
        raw = b"" if size > defaults.MAX_SPEC_BYTES else entry.read_bytes()
    except OSError as exc:  # unreadable here: the file is there all the same
        local.append(_local(path, f"cannot be read: {exc.strerror or exc}"))
        files[path] = None
        return
    if size > defaults.MAX_SPEC_BYTES:  # not read, as the CP does not read it
        limit = size_text(defaults.MAX_SPEC_BYTES)
        local.append(_local(path, f"{size_text(size)} is over the {limit} limit for a spec file"))
        files[path] = None
        return
    try:
        files[path] = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = f"not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}; save it as UTF-8"
        local.append({"file": path, "line": line, "message": message})
        files[path] = None


def _local(path: str, message: str) -> dict[str, Any]:
    return {"file": path, "line": None, "message": message}


def _where(error: dict[str, Any]) -> tuple[str, int]:
    return error["file"], error["line"] or 0


def _app_name(file_name: str) -> str:
    return file_name.rsplit(".", 1)[0]


# -- output ----------------------------------------------------------------------------


def show(answer: dict[str, Any]) -> None:
    """The plan for people: errors with file:line, then each app that changes."""
    for e in answer["errors"]:
        where = f"{e['file']}:{e['line']}" if e["line"] else e["file"]
        click.echo(click.style(f"✖ {where}: {e['message']}", fg="red"))
    changed = [a for a in answer["apps"] if a["change"] != "none"]
    for a in changed:
        _show_app(a)
    same = len(answer["apps"]) - len(changed)
    if same:
        click.echo(f"= {same} app(s) unchanged")
    if answer["valid"]:
        counts = {c: sum(a["change"] == c for a in changed) for c in MARKS}
        summary = ", ".join(f"{n} to {c}" for c, n in counts.items() if n)
        click.echo(f"Plan: {summary}" if summary else "✔ No changes")


def _show_app(a: dict[str, Any]) -> None:
    mark, color = MARKS.get(a["change"], ("?", "white"))
    if a["change"] == "remove":
        how = "its containers are removed"
    else:
        how = "rolls out (canary first)" if a["rollout"] else "applies directly, no rollout"
    revision = f" → {a['revision']}" if a["revision"] else ""
    click.echo(
        click.style(f"{mark} {a['app']}: {a['change']}{revision}, {how}", fg=color, bold=True)
    )
    for f in a["fields"]:
        old = click.style(_value(f.get("old")), fg="red")
        new = click.style(_value(f.get("new")), fg="green")
        click.echo(f"    {f['field']}: {old} → {new}")
    if a["slots"]:
        slots = ", ".join(
            f"{s['slot']} {s['action']} on {s['node'] or '(placed then)'}" for s in a["slots"]
        )
        click.echo(f"    slots: {slots}")
    if a["nodes"]:
        click.echo(f"    nodes: {', '.join(a['nodes'])}")
    if a["note"]:
        click.echo(click.style(f"    ! {a['note']}", fg="yellow"))


def _value(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _invalid(answer: dict[str, Any]) -> str:
    n = len(answer["errors"])
    return f"{n} problem(s) in the spec files; a push of them would be refused"
