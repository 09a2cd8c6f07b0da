"""The app verbs: each one a commit to the desired-state repository, synced before it returns.

Create, update, start/stop, remove and roll back are edits of the app's spec
file, recorded in Git with their author; retry is the one verb that only asks
the rollout controller to try the held or failed revision again. Every answer
is the app's view as of the call's own change (read-your-writes).

A change made through the API names the token that made it: a `Docklet-Token:`
trailer the CP writes itself after a one-line subject (so nothing a caller sends
can become a trailer), and an event, which is also a CP log line.
"""

from __future__ import annotations

import json
from typing import Any

from docklet.common.errors import Conflict, NotFound
from docklet.common.status import EventKind
from docklet.cp.desired import edits, spec
from docklet.cp.desired.edits import Edit
from docklet.cp.desired.gitrepo import GitRepo
from docklet.cp.desired.spec import SpecState
from docklet.cp.reconcile import rollout
from docklet.cp.service.passes import Passes
from docklet.cp.service.tokens import Author, one_line
from docklet.cp.service.views import Views
from docklet.cp.store import events
from docklet.cp.store import views as stored
from docklet.cp.store.db import Store


class Apps:
    """The /api/apps verbs that change an app."""

    def __init__(self, store: Store, repo: GitRepo, passes: Passes, views: Views) -> None:
        self.store, self.repo, self.passes, self.views = store, repo, passes, views

    def commit(
        self, edit: Edit, message: str, author: Author | str, app: str | None = None
    ) -> str | None:
        """Commit an edit, then sync and schedule it before returning.

        `author` is an API caller's `Author`, or, for the CP's own callers (tests,
        benchmarks), a Git author as is. Read-your-writes: the sync brings the
        database at least to this commit (to a later head if others committed
        meanwhile), so the caller's next read sees its change.
        """
        subject = one_line(message)
        if isinstance(author, Author):
            sha = self.repo.commit(edit, f"{subject}\n\n{author.trailer}", author.git)
            if sha is not None:
                self._record(app, f"{subject}, commit {sha[:8]}", author)
        else:
            sha = self.repo.commit(edit, subject, author)
        self.passes.sync()
        # The edited app (every app if None); the controller looks at any other the sync changed.
        self.passes.reconcile(None if app is None else {app})
        return sha

    def _record(self, app: str | None, what: str, author: Author) -> None:
        """The event (and CP log line) that says which token changed what."""
        where = f"app {app}: " if app else ""
        with self.store.write() as db:
            events.record(db, EventKind.APP_DESIRED, f"{where}{what}, by {author}", app=app)

    def create(self, data: dict[str, Any], author: Author | str) -> dict[str, Any]:
        app_spec = spec.validate(data, source="request")
        sha = self.commit(
            edits.create(app_spec),
            f"Create app {app_spec.name} ({app_spec.image})",
            author,
            app_spec.name,
        )
        return {"app": app_spec.name, "commit": sha, **self.views.app(app_spec.name)}

    def update(self, name: str, fields: dict[str, Any], author: Author | str) -> dict[str, Any]:
        # Values stay out of the message (env may hold secrets); the image is what people scan for.
        said = [f"image={fields['image']}" if k == "image" else k for k in fields]
        message = f"Update app {name}: {', '.join(said)}"[:200]
        return self._edit(name, edits.update(name, fields), message, author)

    def set_state(self, name: str, state: SpecState, author: Author | str) -> dict[str, Any]:
        verb = "Start" if state == SpecState.RUNNING else "Stop"
        return self._edit(name, edits.set_state(name, state), f"{verb} app {name}", author)

    def remove(self, name: str, author: Author | str) -> dict[str, Any]:
        return self._edit(name, edits.remove(name), f"Remove app {name}", author)

    def rollback(self, name: str, to: int | None, author: Author | str) -> dict[str, Any]:
        """Commit an older revision's spec back: a person's decision, recorded in Git."""
        self.views.app(name)
        row = self._rollback_target(name, to)
        old = json.loads(row["spec"])

        def restore(data: dict[str, Any]) -> dict[str, Any]:
            return {**old, "state": data.get("state", old.get("state", "running"))}

        message = f"Roll back app {name} to v{row['number']} ({row['commit_sha'][:8]})"
        return self._edit(name, edits.change(name, restore), message, author)

    def retry(self, name: str, author: Author | None = None) -> dict[str, Any]:
        """Roll out the held or failed target revision again, as a person asked."""
        self.views.app(name)
        with self.store.write() as db:
            if not rollout.retry(db, name):
                raise Conflict(f"app {name!r} has no held or failed revision to retry")
            if author is not None:
                told = f"app {name}: retry of the held or failed revision, by {author}"
                events.record(db, EventKind.ROLLOUT, told, app=name)
        self.passes.reconcile({name})
        return {"app": name, "commit": None, **self.views.app(name)}

    def _edit(self, name: str, edit: Edit, message: str, author: Author | str) -> dict[str, Any]:
        sha = self.commit(edit, message, author, name)
        # A removed app with nothing left to clean up is already forgotten.
        return {"app": name, "commit": sha, **(self.views.find(name) or {})}

    def _rollback_target(self, name: str, to: int | None) -> dict[str, Any]:
        if to is not None:
            row = stored.revision(self.store, name, to)
            if row is None:
                raise NotFound(f"app {name!r} has no revision v{to} (docklet history {name})")
            return row
        row = stored.rollback_target(self.store, name)
        if row is None:
            raise Conflict(f"app {name!r} has no earlier stable revision to roll back to")
        return row
