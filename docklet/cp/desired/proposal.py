"""A proposal: spec files someone wrote, laid over the head commit and read as sync reads them.

`docklet diff` and `docklet apply` send spec files (one, or a working tree's
whole `apps/`); this module makes them the commit they would be, without
writing a byte to the repository, and reads it with `sync.parse_commit`, so
its errors are word for word (file:line) what a `git push` and a sync say.
Its `put` edit is how `docklet apply` commits a file: the same checks, run
again on the head the commit lands on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pygit2

from docklet.common import defaults
from docklet.common.errors import BadRequest, InvalidSpec, TooLarge
from docklet.common.units import size_text
from docklet.cp.desired.edits import Edit, app_name, paths_of
from docklet.cp.desired.gitrepo import Changes, Commit, GitRepo
from docklet.cp.desired.spec import AppSpec
from docklet.cp.desired.sync import Parsed, parse_commit

MAX_PATH = 255  # characters of a file name under apps/ (what most file systems allow)
NOT_SENT = "not sent: the client could not read it as a spec file (it says why)"
_PATH = re.compile(rf"{defaults.APPS_DIR}/[^/\x00-\x1f\x7f]{{1,{MAX_PATH}}}")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a proposal, where a person fixes it."""

    file: str
    line: int | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "message": self.message}


@dataclass(frozen=True)
class Proposal:
    """The proposed tree as sync would read it, and which apps the files sent name."""

    commit: Commit
    parsed: Parsed
    sent: frozenset[str]  # the paths of the files sent
    named: frozenset[str]  # their apps
    complete: bool  # the files are the whole of apps/: an app not among them is removed

    def problems(self) -> list[Problem]:
        """The errors of the proposed tree, one per problem (a file may have several): all of
        them, or those of the files sent (another file broken at the head is not theirs)."""
        errors = self.parsed.errors
        mine = [p for p in sorted(errors) if self.complete or p in self.sent or self._names(p)]
        return [problem for path in mine for problem in _split(path, errors[path])]

    def _names(self, path: str) -> bool:
        return path.endswith(defaults.SPEC_SUFFIXES) and app_name(path) in self.named

    def specs(self) -> dict[str, AppSpec]:
        """The valid specs the proposal is about: all of them, or those of the files sent."""
        valid = self.parsed.valid
        return {n: s for n, s in sorted(valid.items()) if self.complete or n in self.named}

    def present(self) -> set[str]:
        """Apps whose file is in the proposed tree, usable or not (those not here are removed)."""
        return set(self.parsed.valid) | self.parsed.kept


def checked_files(files: Any, complete: bool = False) -> dict[str, bytes | None]:
    """The request's files by path: text becomes UTF-8 bytes; None is a file the client
    found but could not send (too large, not UTF-8). A 400 says what is wrong with the rest."""
    if not isinstance(files, dict) or not (files or complete):  # complete: apps/ may be empty
        raise BadRequest(
            '\'files\' is an object of spec files by path, e.g. {"apps/web.yaml": "name: web\\n…"}'
        )
    if len(files) > defaults.MAX_APP_FILES:
        raise TooLarge(f"at most {defaults.MAX_APP_FILES} files (as in a commit); got {len(files)}")
    out: dict[str, bytes | None] = {}
    for path, text in files.items():
        if not _PATH.fullmatch(path):
            raise BadRequest(
                f"file {path[:80]!r}: a spec file's path is {defaults.APPS_DIR}/NAME.yaml"
                f" (a file of {defaults.APPS_DIR}/ itself, at most {MAX_PATH} characters)"
            )
        if text is not None and not isinstance(text, str):
            raise BadRequest(f"file {path!r}: its content is text (a JSON string)")
        out[path] = None if text is None else text.encode("utf-8")
    return out


def propose(repo: GitRepo, files: Mapping[str, bytes | None], complete: bool) -> Proposal:
    """The head with `files` laid over it (`complete`: in its place), read as sync reads it."""
    head = repo.head()
    base = repo.read(head) if head is not None and not complete else None
    commit = overlay(base, files)
    named = frozenset(app_name(p) for p in files if p.endswith(defaults.SPEC_SUFFIXES))
    return Proposal(commit, parse_commit(commit), frozenset(files), named, complete)


def overlay(base: Commit | None, files: Mapping[str, bytes | None]) -> Commit:
    """`base`'s spec files with `files` in place of each app's file(s); nothing is written.

    A file sent for an app that the base defines in another file (web.yml for web.yaml)
    takes that file's place, as `put` commits it.
    """
    tree = dict(base.files) if base else {}
    oids = dict(base.oids) if base else {}
    problems = dict(base.problems) if base else {}
    for path, data in files.items():
        if path.endswith(defaults.SPEC_SUFFIXES):  # apps/web.txt is no file of app web
            for old in paths_of(tree, app_name(path)):
                tree.pop(old)
                oids.pop(old, None)
        problems.pop(path, None)
        problem = _not_a_spec(path, data)
        if problem:
            problems[path] = f"{path}: {problem}"
            continue
        assert data is not None  # _not_a_spec said so
        tree[path] = data
        oids[path] = str(pygit2.hash(data))  # Git's blob id: unchanged files hit sync's cache
    return Commit("proposed", "", "", tree, oids, problems)


def _not_a_spec(path: str, data: bytes | None) -> str | None:
    """Why a file sent is not read as a spec; the words are gitrepo's, which says it of a push."""
    if data is None:
        return NOT_SENT
    if not path.endswith(defaults.SPEC_SUFFIXES):
        return f"ignored: spec files end in {' or '.join(defaults.SPEC_SUFFIXES)}"
    if len(data) > defaults.MAX_SPEC_BYTES:
        limit = size_text(defaults.MAX_SPEC_BYTES)
        return f"{size_text(len(data))} is over the {limit} limit for a spec file"
    return None


def _split(path: str, message: str) -> list[Problem]:
    """`apps/web.yaml:3: a; apps/web.yaml:5: b` → one Problem a line (spec.validate joins them)."""
    where = re.escape(path)
    parts = re.split(rf"; (?={where}:[0-9]+: )", message)
    found = []
    for part in parts:
        m = re.match(rf"{where}:([0-9]+): (.*)\Z", part, re.DOTALL)
        if m:
            found.append(Problem(path, int(m.group(1)), m.group(2)))
        else:
            found.append(Problem(path, None, part.removeprefix(f"{path}: ")))
    return found


def put(path: str, data: bytes) -> Edit:
    """Commit `data` as the app's file, if the proposed tree reads it as valid; else
    InvalidSpec with its file:line errors. The app's existing file keeps its name."""
    name = app_name(path)

    def edit(files: dict[str, bytes]) -> Changes:
        existing = paths_of(files, name)
        target = existing[0] if len(existing) == 1 else path
        base = Commit("head", "", "", files, {}, {})
        parsed = parse_commit(overlay(base, {target: data}))
        mine = [parsed.errors[p] for p in sorted(parsed.errors) if app_name(p) == name]
        if mine:
            raise InvalidSpec("; ".join(mine) + "; nothing was committed", source=target)
        changes: Changes = dict.fromkeys(p for p in existing if p != target)
        changes[target] = data
        return changes

    return edit


def fields(old: AppSpec | None, new: AppSpec) -> list[dict[str, Any]]:
    """What changes, field by field (`env.KEY`, `rollout.canary`): old → new, as JSON.

    A new app's fields are those written (the defaults would bury them); a changed
    app's are compared whole, so a field removed (back to its default) shows too.
    """
    before = _flat(old.model_dump(mode="json")) if old else {}
    after = _flat(new.model_dump(mode="json") if old else new.as_written())
    if old is None:
        after.pop("name")  # the entry's app already
    return [
        {"field": key, "old": before.get(key), "new": after.get(key)}
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    ]


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; lists and scalars as they are."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
