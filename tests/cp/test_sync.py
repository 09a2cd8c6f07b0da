"""Sync: commits in the desired-state repository become revisions in the database."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from docklet.cp.desired.sync import sync
from docklet.cp.service.controlplane import ControlPlane
from docklet.cp.settings import CPConfig
from docklet.cp.store.db import Store

ALICE = "Alice <alice@example.com>"
EXAMPLE_REPO = Path(__file__).resolve().parents[2] / "examples" / "repo"
WEB = "name: web\nimage: nginx:1.27\nports: ['8080:80']\n"


def push(cp: ControlPlane, files: dict[str, str | None], message: str = "Update apps") -> str:
    """Commit these files (None deletes) as a user would; the caller syncs."""
    changes = {p: c.encode() if c is not None else None for p, c in files.items()}
    sha = cp.repo.commit(lambda current: changes, message, ALICE)
    assert sha is not None, "the commit changed nothing"
    return sha


def revisions(store: Store, app: str) -> list[dict[str, Any]]:
    return store.query(
        "SELECT number, status, commit_sha, author, message, spec FROM revisions"
        " WHERE app = ? ORDER BY number",
        (app,),
    )


def app_row(store: Store, name: str) -> dict[str, Any] | None:
    return store.one("SELECT desired, current_revision FROM apps WHERE name = ?", (name,))


def sync_errors(store: Store) -> dict[str, str]:
    return {r["path"]: r["message"] for r in store.query("SELECT * FROM sync_errors")}


def test_first_commit_creates_revision_v1(cp: ControlPlane) -> None:
    sha = push(cp, {"apps/web.yaml": WEB}, "Create app web")
    result = sync(cp.store, cp.repo)
    assert result is not None and result.new_revisions == {"web": 1}
    (v1,) = revisions(cp.store, "web")
    assert (v1["number"], v1["status"], v1["commit_sha"]) == (1, "pending", sha)
    assert (v1["author"], v1["message"]) == (ALICE, "Create app web")
    assert json.loads(v1["spec"])["image"] == "nginx:1.27"
    assert app_row(cp.store, "web") == {"desired": "running", "current_revision": 1}


def test_sync_without_a_new_commit_does_nothing(cp: ControlPlane) -> None:
    assert sync(cp.store, cp.repo) is None  # an empty repository
    push(cp, {"apps/web.yaml": WEB})
    assert sync(cp.store, cp.repo) is not None
    assert sync(cp.store, cp.repo) is None
    assert len(revisions(cp.store, "web")) == 1


def test_reformatted_spec_with_same_values_makes_no_revision(cp: ControlPlane) -> None:
    push(cp, {"apps/web.yaml": WEB})
    sync(cp.store, cp.repo)
    same = "# The front end.\nimage: 'nginx:1.27'\nname: web\nreplicas: 1\nports:\n  - '8080:80'\n"
    push(cp, {"apps/web.yaml": same}, "Reformat web")
    result = sync(cp.store, cp.repo)
    assert result is not None and result.new_revisions == {}
    assert [r["number"] for r in revisions(cp.store, "web")] == [1]


def test_changed_image_makes_v2_the_target(cp: ControlPlane) -> None:
    push(cp, {"apps/web.yaml": WEB})
    sync(cp.store, cp.repo)
    sha = push(cp, {"apps/web.yaml": WEB.replace("1.27", "1.28")}, "Upgrade nginx")
    result = sync(cp.store, cp.repo)
    assert result is not None and result.new_revisions == {"web": 2}
    v1, v2 = revisions(cp.store, "web")
    # Sync records; the rollout controller decides (v1 never ran: v2 simply takes over).
    assert v1["status"] == "pending"
    assert (v2["status"], v2["commit_sha"], v2["message"]) == ("pending", sha, "Upgrade nginx")
    assert json.loads(v2["spec"])["image"] == "nginx:1.28"
    assert app_row(cp.store, "web") == {"desired": "running", "current_revision": 1}
    target = cp.store.one("SELECT target_revision FROM apps WHERE name = 'web'")
    assert target == {"target_revision": 2}


def test_changing_only_state_changes_desired_not_revision(cp: ControlPlane) -> None:
    push(cp, {"apps/web.yaml": WEB})
    sync(cp.store, cp.repo)
    push(cp, {"apps/web.yaml": WEB + "state: stopped\n"}, "Stop web")
    result = sync(cp.store, cp.repo)
    assert result is not None and result.new_revisions == {}
    assert app_row(cp.store, "web") == {"desired": "stopped", "current_revision": 1}
    push(cp, {"apps/web.yaml": WEB}, "Start web")
    sync(cp.store, cp.repo)
    assert app_row(cp.store, "web") == {"desired": "running", "current_revision": 1}


def test_invalid_file_is_a_sync_error_and_the_app_keeps_its_revision(cp: ControlPlane) -> None:
    push(cp, {"apps/web.yaml": WEB})
    sync(cp.store, cp.repo)
    bad = push(cp, {"apps/web.yaml": WEB + "replicas: lots\n"}, "Scale web")
    result = sync(cp.store, cp.repo)
    assert result is not None and result.new_revisions == {} and result.removed == []
    errors = sync_errors(cp.store)
    assert list(errors) == ["apps/web.yaml"]
    assert errors["apps/web.yaml"].startswith("apps/web.yaml:4: replicas: ")
    assert cp.store.one("SELECT commit_sha FROM sync_errors") == {"commit_sha": bad}
    assert app_row(cp.store, "web") == {"desired": "running", "current_revision": 1}
    assert [r["status"] for r in revisions(cp.store, "web")] == ["pending"]
    assert sync(cp.store, cp.repo) is None  # the bad commit counts as synced


def test_fixing_the_file_clears_the_error(cp: ControlPlane) -> None:
    push(cp, {"apps/web.yaml": WEB})
    push(cp, {"apps/web.yaml": WEB + "rollout: {canry: 1}\n"})
    sync(cp.store, cp.repo)
    assert "rollout.canry" in sync_errors(cp.store)["apps/web.yaml"]
    push(cp, {"apps/web.yaml": WEB + "rollout: {canary: 0}\n"}, "Fix typo")
    result = sync(cp.store, cp.repo)
    assert result is not None and result.errors == {}
    assert sync_errors(cp.store) == {}
    assert [r["number"] for r in revisions(cp.store, "web")] == [1]
    assert app_row(cp.store, "web") == {"desired": "running", "current_revision": 1}


def test_invalid_new_app_is_not_created(cp: ControlPlane) -> None:
    push(cp, {"apps/api.yaml": "name: api\nimage: 'python:'\n"})
    result = sync(cp.store, cp.repo)
    assert result is not None and "apps/api.yaml" in result.errors
    assert "image: 'python:'" in sync_errors(cp.store)["apps/api.yaml"]
    assert app_row(cp.store, "api") is None


def test_yaml_syntax_error_is_reported_with_its_line(cp: ControlPlane) -> None:
    push(cp, {"apps/web.yaml": "name: web\nimage: nginx\nenv:\n  A: b\n   C: d\n"})
    sync(cp.store, cp.repo)
    assert sync_errors(cp.store)["apps/web.yaml"].startswith("apps/web.yaml:5: not valid YAML")


def test_name_must_match_the_file_name(cp: ControlPlane) -> None:
    push(cp, {"apps/web.yaml": WEB.replace("name: web", "name: frontend")})
    sync(cp.store, cp.repo)
    message = sync_errors(cp.store)["apps/web.yaml"]
    assert "'frontend'" in message and "must match the file name ('web')" in message
    assert app_row(cp.store, "frontend") is None
    assert app_row(cp.store, "web") is None


def test_same_app_in_two_files_is_an_error_and_neither_wins(cp: ControlPlane) -> None:
    push(cp, {"apps/web.yaml": WEB})
    sync(cp.store, cp.repo)
    push(cp, {"apps/web.yml": WEB.replace("1.27", "1.28")})
    sync(cp.store, cp.repo)
    errors = sync_errors(cp.store)
    assert list(errors) == ["apps/web.yaml", "apps/web.yml"]
    assert "defined in 2 files (apps/web.yaml, apps/web.yml)" in errors["apps/web.yml"]
    # Which one a person meant is not Docklet's guess: the app keeps what it ran.
    (rev,) = revisions(cp.store, "web")
    assert json.loads(rev["spec"])["image"] == "nginx:1.27"
    assert app_row(cp.store, "web") == {"desired": "running", "current_revision": 1}


def test_deleting_the_file_marks_the_app_removed(cp: ControlPlane) -> None:
    push(cp, {"apps/web.yaml": WEB, "apps/api.yaml": "name: api\nimage: python:3.12\n"})
    sync(cp.store, cp.repo)
    push(cp, {"apps/web.yaml": None}, "Remove web")
    result = sync(cp.store, cp.repo)
    assert result is not None and result.removed == ["web"]
    assert app_row(cp.store, "web") == {"desired": "removed", "current_revision": 1}
    assert app_row(cp.store, "api") == {"desired": "running", "current_revision": 1}
    assert len(revisions(cp.store, "web")) == 1  # history is kept


def test_restoring_a_deleted_file_brings_the_app_back(cp: ControlPlane) -> None:
    push(cp, {"apps/web.yaml": WEB})
    sync(cp.store, cp.repo)
    push(cp, {"apps/web.yaml": None}, "Remove web")
    sync(cp.store, cp.repo)
    push(cp, {"apps/web.yaml": WEB}, "Revert: remove web")
    result = sync(cp.store, cp.repo)
    assert result is not None and result.removed == []
    assert app_row(cp.store, "web") == {"desired": "running", "current_revision": 1}


def test_files_that_are_not_specs_are_reported_not_silently_ignored(cp: ControlPlane) -> None:
    push(
        cp,
        {
            "apps/README.md": "# Our apps\n\nOne file per app.\n",
            "apps/notes.txt": "not: a: spec\n",
            "apps/api.yml": "name: api\nimage: python:3.12\n",
        },
    )
    result = sync(cp.store, cp.repo)
    assert result is not None and result.new_revisions == {"api": 1}
    assert sync_errors(cp.store) == {
        "apps/README.md": "apps/README.md: ignored: spec files end in .yaml or .yml",
        "apps/notes.txt": "apps/notes.txt: ignored: spec files end in .yaml or .yml",
    }


def test_everything_survives_a_cp_restart(cp: ControlPlane, config: CPConfig) -> None:
    push(cp, {"apps/web.yaml": WEB, "apps/api.yaml": "name: api\nimage: python:3.12\n"})
    sync(cp.store, cp.repo)
    push(cp, {"apps/web.yaml": WEB.replace("1.27", "1.28"), "apps/api.yaml": "name: api\n"})
    sync(cp.store, cp.repo)
    before = revisions(cp.store, "web"), sync_errors(cp.store), app_row(cp.store, "api")
    cp.store.close()

    restarted = ControlPlane(config)
    try:
        store = restarted.store
        assert (revisions(store, "web"), sync_errors(store), app_row(store, "api")) == before
        assert [r["status"] for r in revisions(store, "web")] == ["pending", "pending"]
        assert "image" in sync_errors(store)["apps/api.yaml"]
        assert restarted.cluster_id == cp.cluster_id
        assert sync(store, restarted.repo) is None  # nothing to redo
    finally:
        restarted.store.close()


def test_example_repository_pushed_to_a_fresh_cp_syncs_cleanly(
    cp: ControlPlane, config: CPConfig, tmp_path: Path
) -> None:
    work = tmp_path / "desired"
    shutil.copytree(EXAMPLE_REPO, work)
    for secret in ("billing-db-password", "stripe-key"):  # apps/billing.yaml uses them
        cp.secrets.set(secret, "example-value", "test")
    env = {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "Bob",
        "GIT_AUTHOR_EMAIL": "bob@example.com",
        "GIT_COMMITTER_NAME": "Bob",
        "GIT_COMMITTER_EMAIL": "bob@example.com",
    }
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "."],
        ["commit", "-q", "-m", "Initial apps"],
        ["push", "-q", str(config.data_dir / "repo.git"), "main"],
    ):
        subprocess.run(["git", *args], cwd=work, env=env, check=True, capture_output=True)
    result = sync(cp.store, cp.repo)
    assert result is not None and result.errors == {}
    expected = {p.stem for p in (EXAMPLE_REPO / "apps").glob("*.yaml")}
    assert result.new_revisions == dict.fromkeys(expected, 1)
    assert {r["author"] for r in cp.store.query("SELECT author FROM revisions")} == {
        "Bob <bob@example.com>"
    }


def test_a_head_that_moves_during_a_sync_is_synced_instead(
    cp: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    cp.repo.commit(lambda f: {"apps/web.yaml": b"name: web\nimage: nginx:1\n"}, "1", ALICE)
    read, raced = cp.repo.read, []

    def slow_read(sha: str) -> Any:
        commit = read(sha)
        if not raced:  # another writer lands while this sync parses
            raced.append(sha)
            cp.repo.commit(lambda f: {"apps/api.yaml": b"name: api\nimage: api:1\n"}, "2", ALICE)
        return commit

    monkeypatch.setattr(cp.repo, "read", slow_read)
    # The sync must neither record the older head (that would hide `api`) nor
    # give up (a write that committed `api` would then answer 404).
    result = sync(cp.store, cp.repo)
    assert result is not None and result.commit == cp.repo.head()
    assert {r["name"]: r["desired"] for r in cp.store.query("SELECT * FROM apps")} == {
        "api": "running",
        "web": "running",
    }


def test_a_branch_moved_back_on_purpose_is_synced(cp: ControlPlane) -> None:
    first = cp.repo.commit(lambda f: {"apps/web.yaml": b"name: web\nimage: nginx:1\n"}, "1", ALICE)
    cp.repo.commit(lambda f: {"apps/web.yaml": b"name: web\nimage: nginx:2\n"}, "2", ALICE)
    sync(cp.store, cp.repo)
    subprocess.run(  # git push --force of the older commit, as the CLI would do it
        ["git", "--git-dir", str(cp.repo.path), "update-ref", "refs/heads/main", first],
        check=True,
    )
    result = sync(cp.store, cp.repo)
    assert result is not None and result.new_revisions == {"web": 2}  # v1 was nginx:2
    assert json.loads(revisions(cp.store, "web")[-1]["spec"])["image"] == "nginx:1"


def test_a_commit_costs_what_it_changed_not_what_the_repository_holds(
    cp: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    from docklet.cp.desired import sync as syncing

    recorded: dict[str, str] = {}
    push(cp, {f"apps/app{i}.yaml": f"name: app{i}\nimage: nginx:1.27\n" for i in range(20)})
    first = sync(cp.store, cp.repo, recorded)
    assert first is not None and len(first.changed) == 20 and len(recorded) == 20
    applied: list[str] = []
    apply = syncing._apply
    monkeypatch.setattr(
        syncing, "_apply", lambda db, spec, *a: applied.append(spec.name) or apply(db, spec, *a)
    )
    push(cp, {"apps/app3.yaml": "name: app3\nimage: nginx:1.28\n"})
    second = sync(cp.store, cp.repo, recorded)
    assert second is not None and applied == ["app3"] and second.changed == {"app3"}
    assert second.new_revisions == {"app3": 2}
    # Removed, then the same bytes again: recorded anew, not skipped as "the same blob".
    push(cp, {"apps/app5.yaml": None})
    assert sync(cp.store, cp.repo, recorded).removed == ["app5"]  # type: ignore[union-attr]
    push(cp, {"apps/app5.yaml": "name: app5\nimage: nginx:1.27\n"})
    sync(cp.store, cp.repo, recorded)
    assert app_row(cp.store, "app5") == {"desired": "running", "current_revision": 1}
    assert applied == ["app3", "app5"]


def test_a_restarted_cp_does_not_record_again_what_it_recorded_before(
    cp: ControlPlane, config: CPConfig
) -> None:
    push(cp, {f"apps/app{i}.yaml": f"name: app{i}\nimage: nginx:1.27\n" for i in range(3)})
    push(cp, {"apps/bad.yaml": "name: [\n"})
    cp.passes.sync()
    restarted = ControlPlane(config)
    try:
        assert restarted.passes.synced_blobs == cp.passes.synced_blobs
        assert sorted(restarted.passes.synced_blobs) == ["app0", "app1", "app2"]  # not the bad one
    finally:
        restarted.store.close()
