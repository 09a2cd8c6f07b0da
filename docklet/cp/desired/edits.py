"""An app's file in the desired-state repository: `apps/<name>.yaml`.

The one module that reads, merges and writes app files. Each verb returns an
edit for `GitRepo.commit`: a function of the files at the head that returns
the changes. The commit runs it again on a newer head when the branch moved,
so each check ("already exists", "does not exist") is made on the commit the
change lands on, never on a stale read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from docklet.common import defaults
from docklet.common.errors import Conflict, InvalidSpec, NotFound
from docklet.cp.desired import spec, specfile
from docklet.cp.desired.gitrepo import Changes

Edit = Callable[[dict[str, bytes]], Changes]


def app_name(path: str) -> str:
    """`apps/web.yaml` → `web`: the one spelling of an app's name from its file."""
    return path.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def paths_of(files: dict[str, bytes], name: str) -> list[str]:
    """Every file that defines app `name` (two when both web.yaml and web.yml exist)."""
    return [
        f"{defaults.APPS_DIR}/{name}{suffix}"
        for suffix in defaults.SPEC_SUFFIXES
        if f"{defaults.APPS_DIR}/{name}{suffix}" in files
    ]


def _the_file(files: dict[str, bytes], name: str) -> str:
    paths = paths_of(files, name)
    if not paths:
        raise NotFound(f"app {name!r} does not exist (docklet ps lists apps)")
    if len(paths) > 1:
        raise Conflict(
            f"app {name!r} is defined in {' and '.join(paths)}; remove one with a commit"
            f" (or remove the app: docklet rm {name})"
        )
    return paths[0]


def _read(files: dict[str, bytes], path: str) -> dict[str, Any]:
    """The file as data, read as the sync reads it; it need not be valid (the edit may fix it)."""
    try:
        data = specfile.parse(files[path], source=path)
    except InvalidSpec as exc:
        raise InvalidSpec(
            f"{exc.message}; fix it with a commit, or remove the app (docklet rm)"
        ) from None
    return data if isinstance(data, dict) else {}


def create(app_spec: spec.AppSpec) -> Edit:
    """Add the app's file; refused when the app exists."""
    text = specfile.to_yaml(app_spec).encode()

    def edit(files: dict[str, bytes]) -> Changes:
        if paths_of(files, app_spec.name):
            raise Conflict(
                f"app {app_spec.name!r} already exists; pick another --name or remove it"
            )
        return {f"{defaults.APPS_DIR}/{app_spec.name}.yaml": text}

    return edit


def change(name: str, apply: Callable[[dict[str, Any]], dict[str, Any]]) -> Edit:
    """Rewrite the app's file with `apply(current data)`, validated before it is committed."""

    def edit(files: dict[str, bytes]) -> Changes:
        path = _the_file(files, name)
        new = apply(_read(files, path))
        spec.validate(new, source=path)
        return {path: specfile.dump(new)}

    return edit


def update(name: str, fields: dict[str, Any]) -> Edit:
    """Merge `fields` into the spec (what `docklet update` sends)."""
    if "name" in fields and fields["name"] != name:
        raise InvalidSpec("an app cannot be renamed; create a new one instead")
    if isinstance(fields.get("image"), str):
        fields = {**fields, "image": spec.with_default_tag(fields["image"].strip())}
    return change(name, lambda data: {**data, **fields})


def set_state(name: str, state: spec.SpecState) -> Edit:
    return change(name, lambda data: {**data, "state": str(state)})


def remove(name: str) -> Edit:
    """Delete every file of the app, valid or not (a broken file is never parsed)."""

    def edit(files: dict[str, bytes]) -> Changes:
        paths = paths_of(files, name)
        if not paths:
            raise NotFound(f"app {name!r} does not exist (docklet ps lists apps)")
        return dict.fromkeys(paths)

    return edit
