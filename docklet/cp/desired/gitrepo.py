"""The desired-state repository: a bare Git repository in the CP's data dir.

Imperative API calls become commits here. Moving the branch is a
compare-and-swap under Git's own `<ref>.lock` protocol, the one `git push`
(receive-pack) honours too, so two writers never lose each other's commit:
the loser re-reads the new head and tries again.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pygit2

from docklet.common import defaults
from docklet.common.errors import RefMoved, RepoError
from docklet.common.units import size_text

log = logging.getLogger(__name__)

COMMITTER = ("Docklet", "docklet@localhost")
STALE_LOCK_AGE = 60.0  # a ref lock this old was left by a writer that died
COMMIT_RETRIES = 20
# Pushes the commit to the upstream before the branch moves (upstream mode, upstream.py):
# RefMoved when the upstream moved meanwhile, so the edit is redone on its new head.
Publish = Callable[[str | None, str, list[str]], None]  # parent, commit, the paths it changes

# Objects must be on disk before a ref points at them: a crash must not leave
# the branch naming a commit whose objects were never flushed.
pygit2.option(pygit2.enums.Option.ENABLE_FSYNC_GITDIR, True)

Changes = dict[str, bytes | None]  # path → new content, or None to delete


MAX_MESSAGE = 4096  # of a commit message kept with a revision
READ_KEPT = 4  # commits kept once read (GitRepo.read)
BLOBS_KEPT_BYTES = 32 * 1024 * 1024  # spec files kept by blob id once read (GitRepo._files)
BLOB_ENTRY_BYTES = 256  # what keeping one costs besides its bytes (its id, the dict slot)
_FILE_MODES = (pygit2.enums.FileMode.BLOB, pygit2.enums.FileMode.BLOB_EXECUTABLE)


@dataclass(frozen=True)
class Commit:
    sha: str
    author: str
    message: str
    files: dict[str, bytes]  # every spec file under apps/ at this commit, by path
    oids: dict[str, str] = field(default_factory=dict)  # the blob id of each of them
    # Entries under apps/ that are not spec files Docklet reads, and why; never silently
    # ignored, so a push of `apps/web.YAML` tells its author it did nothing.
    problems: dict[str, str] = field(default_factory=dict)


def _text(raw: bytes, limit: int | None = None) -> str:
    """Text from Git's bytes whatever encoding a commit claims (a bogus one included)."""
    return raw[:limit].decode("utf-8", errors="replace") if limit else raw.decode(errors="replace")


def _not_a_spec(entry: pygit2.Object, name: str, utf8: bool) -> str | None:
    """Why an entry under apps/ is not read as a spec, or None when it is one."""
    if not utf8:
        return "ignored: the file name is not UTF-8; rename it"
    if isinstance(entry, pygit2.Tree):
        return "ignored: specs are read from apps/ itself, not its subdirectories"
    if entry.filemode == pygit2.enums.FileMode.LINK:
        return "refused: a symbolic link; commit the spec itself"
    if not isinstance(entry, pygit2.Blob):
        return "ignored: a submodule or other non-file entry"
    if not name.endswith(defaults.SPEC_SUFFIXES):
        return f"ignored: spec files end in {' or '.join(defaults.SPEC_SUFFIXES)}"
    if entry.size > defaults.MAX_SPEC_BYTES:  # refused before its bytes are even read
        limit = size_text(defaults.MAX_SPEC_BYTES)
        return f"{size_text(entry.size)} is over the {limit} limit for a spec file"
    return None


class GitRepo:
    def __init__(self, path: Path, branch: str = defaults.GIT_BRANCH) -> None:
        self._setup(path, branch)
        if (path / "HEAD").exists():
            self.repo = pygit2.Repository(str(path))
        else:
            path.mkdir(parents=True, exist_ok=True)
            self.repo = pygit2.init_repository(str(path), bare=True, initial_head=branch)
            log.info("repo %s: created (branch %s)", path, branch)
        # Let `git push` to a checked-out-less repo update this branch.
        self.repo.config["receive.denyCurrentBranch"] = "updateInstead"

    @classmethod
    def quarantined(cls, path: Path, branch: str = defaults.GIT_BRANCH) -> GitRepo:
        """The repository as a pre-receive hook sees it: with the pushed objects, which
        Git keeps in quarantine directories it names in the environment."""
        repo = cls.__new__(cls)
        repo._setup(path, branch)
        repo.repo = pygit2.Repository(str(path), pygit2.enums.RepositoryOpenFlag.FROM_ENV)
        return repo

    def _setup(self, path: Path, branch: str) -> None:
        self.path = path
        self.ref = f"refs/heads/{branch}"
        self._lock = threading.Lock()
        self.publish: Publish | None = None  # set in upstream mode
        self._read: dict[str, Commit] = {}  # the newest commits read, by sha
        self._read_lock = threading.Lock()
        # Spec files by blob id: a commit that changes one file of a thousand reads one
        # (a blob never changes), not a thousand. Cleared when over BLOBS_KEPT_BYTES.
        self._blobs: dict[str, bytes] = {}
        self._blob_bytes = 0

    def head(self) -> str | None:
        ref = self.repo.references.get(self.ref)
        return str(ref.target) if ref is not None else None

    def read(self, sha: str) -> Commit:
        """The commit's spec files; the last few read are kept (a commit never changes),
        so a write, which reads the head to edit it and then syncs it, reads each once."""
        with self._read_lock:
            kept = self._read.get(sha)
        if kept is not None:
            return kept
        read = self._read_commit(sha)
        with self._read_lock:
            self._read[sha] = read
            while len(self._read) > READ_KEPT:
                del self._read[next(iter(self._read))]  # the oldest
        return read

    def _read_commit(self, sha: str) -> Commit:
        commit = self.repo.get(sha)
        if not isinstance(commit, pygit2.Commit):
            raise RepoError(f"{sha} is not a commit in {self.path}")
        # Raw bytes: a commit may declare an encoding Python does not know.
        author = commit.author
        files, oids, problems = self._files(commit)
        return Commit(
            sha=sha,
            author=f"{_text(author.raw_name)} <{_text(author.raw_email)}>",
            message=_text(commit.raw_message, MAX_MESSAGE).strip(),
            files=files,
            oids=oids,
            problems=problems,
        )

    def _files(
        self, commit: pygit2.Commit
    ) -> tuple[dict[str, bytes], dict[str, str], dict[str, str]]:
        files: dict[str, bytes] = {}
        oids: dict[str, str] = {}
        problems: dict[str, str] = {}
        try:
            tree = commit.tree / defaults.APPS_DIR
        except KeyError:
            return files, oids, problems
        if not isinstance(tree, pygit2.Tree):
            return files, oids, problems
        for n, entry in enumerate(tree):
            try:
                name, utf8 = entry.raw_name.decode(), True
            except UnicodeDecodeError:
                name, utf8 = entry.raw_name.decode(errors="backslashreplace"), False
            path = f"{defaults.APPS_DIR}/{name}"
            oid = str(entry.id)
            known = self._blobs.get(oid)
            if (
                known is not None
                and n < defaults.MAX_APP_FILES
                and utf8
                and entry.filemode in _FILE_MODES
                and name.endswith(defaults.SPEC_SUFFIXES)
            ):
                files[path], oids[path] = known, oid  # checked, sized and read before
                continue
            if n >= defaults.MAX_APP_FILES:
                problems[f"{defaults.APPS_DIR}/"] = (
                    f"{defaults.APPS_DIR}/ holds more than {defaults.MAX_APP_FILES} entries;"
                    " the rest are not read"
                )
                break
            problem = _not_a_spec(entry, name, utf8)
            if problem:
                problems[path] = f"{path}: {problem}"
                continue
            files[path] = entry.data
            oids[path] = oid
            self._keep_blob(oid, files[path])
        return files, oids, problems

    def _keep_blob(self, oid: str, data: bytes) -> None:
        with self._read_lock:
            # Counted with each entry's own cost, so many tiny specs are bounded too.
            cost = len(data) + BLOB_ENTRY_BYTES
            if self._blob_bytes + cost > BLOBS_KEPT_BYTES:
                self._blobs.clear()
                self._blob_bytes = 0
            self._blobs[oid] = data
            self._blob_bytes += cost

    def commit(
        self, edit: Callable[[dict[str, bytes]], Changes], message: str, author: str
    ) -> str | None:
        """Apply `edit` to the files at the head and commit the result.

        `edit` sees the current files and returns the changes; it may raise to
        refuse (a duplicate app, say). When the branch moves underneath, it
        runs again on the new head. Returns the new commit, or None when the
        edit changed nothing. Only files under apps/ are Docklet's to edit.
        In upstream mode `publish` pushes the commit before the branch moves
        (a commit the upstream refused is never deployed); it raises RefMoved
        when the upstream moved, having fetched its new head, so the edit runs
        again there too.
        """
        # A retry in upstream mode is a fetch and a push over the network: fewer of them.
        retries = COMMIT_RETRIES if self.publish is None else defaults.GIT_PUSH_RETRIES
        with self._lock:
            for attempt in range(retries):
                parent = self.head()
                current = dict(self.read(parent).files) if parent else {}  # read is shared
                changes = edit(current)
                if any(not p.startswith(f"{defaults.APPS_DIR}/") for p in changes):
                    raise ValueError(f"Docklet only edits files under {defaults.APPS_DIR}/")
                if all(current.get(p) == c for p, c in changes.items()):
                    return None
                sha = self._write_commit(parent, changes, message, author)
                try:
                    if self.publish is not None:
                        self.publish(parent, sha, sorted(changes))
                    self._swap_ref(parent, sha)
                except RefMoved:
                    log.info("repo %s: branch moved during commit; retrying", self.path)
                    # Back off with jitter so racing writers stop colliding.
                    time.sleep(random.uniform(0.005, 0.02) * (attempt + 1))
                    continue
                return sha
        raise RefMoved("the branch kept moving; try again")

    def _write_commit(self, parent: str | None, changes: Changes, message: str, author: str) -> str:
        index = pygit2.Index()
        if parent:
            index.read_tree(self.repo.get(parent).tree)
        for path, content in changes.items():
            if content is None:
                if path in index:
                    index.remove(path)
            else:
                blob = self.repo.create_blob(content)
                index.add(pygit2.IndexEntry(path, blob, pygit2.enums.FileMode.BLOB))
        tree = index.write_tree(self.repo)
        name, _, email = author.partition(" <")
        who = pygit2.Signature(name or "unknown", email.rstrip(">") or "unknown@localhost")
        parents = [pygit2.Oid(hex=parent)] if parent else []
        oid = self.repo.create_commit(
            None, who, pygit2.Signature(*COMMITTER), message, tree, parents
        )
        return str(oid)

    def writing(self) -> threading.Lock:
        """The lock every move of the branch holds (commits, and an upstream's fetches)."""
        return self._lock

    def move_branch(self, expected: str | None, new: str) -> None:
        """Point the branch at `new` if it still points at `expected`; hold `writing()`."""
        self._swap_ref(expected, new)

    def contains(self, descendant: str, ancestor: str) -> bool:
        """Whether commit `descendant`'s history holds `ancestor` (a fast-forward from it)."""
        try:
            return descendant == ancestor or self.repo.descendant_of(
                pygit2.Oid(hex=descendant), pygit2.Oid(hex=ancestor)
            )
        except (pygit2.GitError, KeyError, ValueError):  # an object missing: not a fast-forward
            return False

    def _swap_ref(self, expected: str | None, new: str) -> None:
        """Point the branch at `new` only if it still points at `expected`."""
        ref_file = self.path / self.ref
        lock = ref_file.with_name(ref_file.name + ".lock")
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        self._clear_stale_lock(lock)
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise RefMoved("another writer holds the branch") from None
        try:
            if self.head() != expected:
                raise RefMoved("the branch moved")
            os.write(fd, f"{new}\n".encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            lock.unlink(missing_ok=True)  # still ours: nobody else can have made it
            raise
        os.close(fd)
        # The rename releases the lock; after it, the lock path may already be
        # another writer's, so it is never touched again.
        os.replace(lock, ref_file)

    def record_outcome(self, app: str, deployed: str | None, note: tuple[str, str] | None) -> None:
        """Say in Git what runs and why a revision did not: refs people look at.

        `refs/docklet/deployed/<app>` points at the commit that runs; a failed
        rollout leaves a note on its commit under `refs/notes/docklet`. Neither
        moves the branch, so neither is synced (and no revert commit is made:
        peers that did so created sync loops).
        """
        with self._lock:
            if deployed:
                self.repo.references.create(deployed_ref(app), pygit2.Oid(hex=deployed), force=True)
            if note:
                commit, text = note
                who = pygit2.Signature(*COMMITTER)
                self.repo.create_note(text, who, who, commit, NOTES_REF, True)

    @staticmethod
    def _clear_stale_lock(lock: Path) -> None:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if age > STALE_LOCK_AGE:
            log.warning("repo: removing stale lock %s (%.0fs old)", lock, age)
            lock.unlink(missing_ok=True)


NOTES_REF = "refs/notes/docklet"
DEPLOYED_REF = "refs/docklet/deployed/{app}"
# Refs only the CP writes (record_outcome): a push to them would forge what runs and
# why a revision failed, so the pre-receive hook refuses it (hooks.py).
RESERVED_REFS = (NOTES_REF, "refs/docklet/")


def is_reserved(ref: str) -> bool:
    """Whether `ref` is the CP's own record, which no push may move."""
    return ref == NOTES_REF or ref.startswith(RESERVED_REFS[1])


def deployed_ref(app: str) -> str:
    return DEPLOYED_REF.format(app=app)
