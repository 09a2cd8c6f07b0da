"""The agent's Docker side, against the real engine."""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import docker.errors
import dockerlab
import pytest
from conftest import RUN_ID, wait_for

from docklet.agent.engine import YOUNG, Engine
from docklet.common.errors import DockerUnavailable, TaskFailed
from docklet.common.status import TaskKind
from docklet.wire.protocol import ContainerSpec, LeasedTask

pytestmark = pytest.mark.docker

DEAD_DOCKER = "unix:///tmp/docklet-no-such-docker.sock"
# A process that ignores SIGTERM: `docker stop` waits out the whole grace period.
IGNORE_TERM = ["sh", "-c", "trap '' TERM; exec httpd -f -p 80 -h /www"]


@contextlib.contextmanager
def slow_stop_image(docker_client: Any, web_image: str) -> Iterator[str]:
    """The web image, but stopped with SIGTERM (the test image's own STOPSIGNAL is SIGKILL)."""
    tag = f"docklet-test/slow-stop:{RUN_ID}"
    dockerfile = f"FROM {web_image}\nSTOPSIGNAL SIGTERM\n".encode()
    docker_client.images.build(
        fileobj=io.BytesIO(dockerfile),
        tag=tag,
        labels={"docklet.test-run": RUN_ID},
        pull=False,
        rm=True,  # docker-py keeps the build's intermediate containers unless told
        forcerm=True,
    )
    try:
        yield tag
    finally:
        dockerlab.remove_image(docker_client, tag)


@pytest.fixture(scope="module")
def slow_image(docker_client: Any, web_image: str) -> Iterator[str]:
    with slow_stop_image(docker_client, web_image) as tag:
        yield tag


@pytest.fixture
def cluster_id(docker_client: Any) -> Iterator[str]:
    cid = f"test-{uuid.uuid4().hex[:8]}"
    yield cid
    for c in docker_client.containers.list(
        ignore_removed=True, all=True, filters={"label": f"docklet.cluster={cid}"}
    ):
        c.remove(force=True)


def deploy_task(image: str, task_id: int = 1, *, hashed: bool = False, **spec: Any) -> LeasedTask:
    """A deploy of a new app's slot 1; `hashed`: named as the CP names it, with the spec hash."""
    payload = {
        "image": image,
        "env": {"GREETING": "hi"},
        "ports": [],
        "volumes": [],
        "labels": {"team": "web"},
        "restart": "unless-stopped",
        "pull": "never",
        "stop_grace_period": "1s",
        "container_hash": "hash-a",
        **spec,
    }
    app = f"e{uuid.uuid4().hex[:6]}"
    return LeasedTask(
        id=task_id,
        kind=TaskKind.DEPLOY,
        app=app,
        slot=1,
        revision=1,
        container=f"docklet.{app}.1" + (f".{payload['container_hash']}" if hashed else ""),
        payload=ContainerSpec.model_validate(payload),
        lease_token="lease",
        lease_seconds=60,
    )


def test_deploy_is_idempotent(docker_client: Any, web_image: str, cluster_id: str) -> None:
    engine = Engine(docker_client)
    task = deploy_task(web_image)
    first = engine.deploy(task, "node-1", cluster_id).container
    second = engine.deploy(task, "node-1", cluster_id).container
    assert first["id"] == second["id"] and second["state"] == "running"
    container = docker_client.containers.get(first["id"])
    assert container.labels["team"] == "web"
    assert container.labels["docklet.cluster"] == cluster_id
    assert "GREETING=hi" in container.attrs["Config"]["Env"]
    assert container.attrs["Config"]["StopTimeout"] == 1
    assert [c["id"] for c in engine.list_managed(cluster_id)] == [first["id"]]
    assert engine.list_managed(f"{cluster_id}-other") == []


def test_deploy_restarts_a_stopped_container_instead_of_making_another(
    docker_client: Any, web_image: str, cluster_id: str
) -> None:
    engine = Engine(docker_client)
    task = deploy_task(web_image)
    first = engine.deploy(task, "node-1", cluster_id).container
    docker_client.containers.get(first["id"]).kill()
    again = engine.deploy(task, "node-1", cluster_id).container
    assert again["id"] == first["id"] and again["state"] == "running"


def test_a_changed_spec_replaces_the_container(
    docker_client: Any, web_image: str, cluster_id: str
) -> None:
    engine = Engine(docker_client)
    task = deploy_task(web_image)
    old = engine.deploy(task, "node-1", cluster_id).container
    assert task.payload is not None
    spec = task.payload.model_copy(update={"env": {"GREETING": "bye"}, "container_hash": "hash-b"})
    new = engine.deploy(task.model_copy(update={"payload": spec}), "node-1", cluster_id).container
    assert new["id"] != old["id"]
    assert len(engine.list_managed(cluster_id)) == 1


def test_stop_and_remove_are_idempotent(
    docker_client: Any, web_image: str, cluster_id: str
) -> None:
    engine = Engine(docker_client)
    task = deploy_task(web_image)
    engine.deploy(task, "node-1", cluster_id)
    assert engine.stop(task, cluster_id)["state"] == "exited"
    assert engine.stop(task, cluster_id)["state"] == "exited"
    engine.remove(task, cluster_id)
    engine.remove(task, cluster_id)
    assert engine.list_managed(cluster_id) == []
    assert engine.stop(task, cluster_id) is None


def test_a_container_docklet_does_not_own_is_never_touched(
    docker_client: Any, web_image: str, cluster_id: str
) -> None:
    engine = Engine(docker_client)
    task = deploy_task(web_image)
    foreign = docker_client.containers.create(web_image, name=task.container)
    try:
        with pytest.raises(TaskFailed, match="does not manage"):
            engine.deploy(task, "node-1", cluster_id)
        with pytest.raises(TaskFailed, match="does not manage"):
            engine.remove(task, cluster_id)
        foreign.reload()  # still there
    finally:
        foreign.remove(force=True)


def test_missing_image_with_pull_never_fails_clearly(docker_client: Any, cluster_id: str) -> None:
    engine = Engine(docker_client)
    task = deploy_task(f"docklet-test/absent:{uuid.uuid4().hex[:6]}")
    with pytest.raises(TaskFailed, match="not on this node and the pull policy is 'never'"):
        engine.deploy(task, "node-1", cluster_id)


def test_a_failed_start_leaves_no_container(
    docker_client: Any, web_image: str, cluster_id: str
) -> None:
    engine = Engine(docker_client)
    task = deploy_task(web_image, command=["/no/such/binary"])
    with pytest.raises(TaskFailed, match="no such file"):
        engine.deploy(task, "node-1", cluster_id)
    assert engine.list_managed(cluster_id) == []


def test_an_unreachable_engine_is_unavailable_not_empty() -> None:
    with pytest.raises(DockerUnavailable) as caught:
        Engine(url=DEAD_DOCKER).list_managed("any")
    # What a person reads says where Docker was expected; the SDK's words are a detail.
    assert caught.value.message == f"Docker engine not answering at {DEAD_DOCKER}"
    assert "FileNotFoundError" in str(caught.value.details["detail"])


def test_the_default_engine_is_named_by_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", DEAD_DOCKER)
    with pytest.raises(DockerUnavailable, match=f"not answering at {DEAD_DOCKER}$"):
        Engine().ping()


def test_a_stop_may_take_longer_than_one_docker_call(
    docker_client: Any, slow_image: str, cluster_id: str
) -> None:
    """A grace period beyond the call timeout is the stop working, not Docker hanging."""
    task = deploy_task(slow_image, command=IGNORE_TERM, stop_grace_period="12s")
    Engine(docker_client).deploy(task, "node-1", cluster_id)
    started = time.monotonic()
    assert Engine(timeout=1).stop(task, cluster_id)["state"] == "exited"  # type: ignore[index]
    assert time.monotonic() - started >= 11  # the process ignored SIGTERM: SIGKILL ended it


# -- rollouts: start-first names, stop-first replaces, digests, evidence ----------------


def next_revision(task: LeasedTask, container_hash: str, **spec: Any) -> LeasedTask:
    """The same slot at another spec: a new hash, so a second container beside the first."""
    assert task.payload is not None
    payload = task.payload.model_copy(update={"container_hash": container_hash, **spec})
    name = f"docklet.{task.app}.{task.slot}.{container_hash}"
    return task.model_copy(update={"id": task.id + 1, "container": name, "payload": payload})


def docker_time(text: str) -> datetime:
    """Docker's RFC 3339 time, nanoseconds cut to the microseconds datetime holds."""
    head, dot, tail = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}{dot}{tail[:6]}+00:00")


def state_of(docker_client: Any, name: str) -> str | None:
    try:
        return str(docker_client.containers.get(name).status)
    except docker.errors.NotFound:
        return None


def test_replaces_stops_the_old_container_after_the_new_one_is_created(
    docker_client: Any, web_image: str, cluster_id: str
) -> None:
    engine = Engine(docker_client)
    v1 = deploy_task(web_image, hashed=True)
    old = engine.deploy(v1, "node-1", cluster_id).container
    v2 = next_revision(v1, "hash-b", env={"GREETING": "bye"}, replaces=[v1.container])
    new = engine.deploy(v2, "node-1", cluster_id).container
    assert new["state"] == "running" and new["name"] == v2.container
    stopped = docker_client.containers.get(old["id"])  # stopped, not removed: kept for a rollback
    created = docker_client.containers.get(new["id"])
    assert stopped.status == "exited"
    # Created, then the old one stopped, then started: never two running, never none for nothing.
    finished = docker_time(stopped.attrs["State"]["FinishedAt"])
    assert docker_time(created.attrs["Created"]) <= finished
    assert finished <= docker_time(created.attrs["State"]["StartedAt"])


def test_an_image_that_cannot_be_pulled_or_a_refused_spec_stops_nothing(
    docker_client: Any, web_image: str, registry: str, cluster_id: str
) -> None:
    engine = Engine(docker_client)
    v1 = deploy_task(web_image, hashed=True)
    engine.deploy(v1, "node-1", cluster_id)
    absent = f"{registry}/docklet-test/absent:{uuid.uuid4().hex[:8]}"
    missing = next_revision(v1, "hash-b", image=absent, pull="missing", replaces=[v1.container])
    with pytest.raises(TaskFailed, match=f"pull {absent}"):
        engine.deploy(missing, "node-1", cluster_id)
    refused = next_revision(v1, "hash-c", restart="sometimes", replaces=[v1.container])
    with pytest.raises(TaskFailed, match="sometimes"):
        engine.deploy(refused, "node-1", cluster_id)
    assert [(c["name"], c["state"]) for c in engine.list_managed(cluster_id)] == [
        (v1.container, "running")
    ]


def test_a_new_container_that_will_not_start_gives_the_slot_back(
    docker_client: Any, web_image: str, cluster_id: str
) -> None:
    engine = Engine(docker_client)
    v1 = deploy_task(web_image, hashed=True)
    old = engine.deploy(v1, "node-1", cluster_id).container
    broken = next_revision(v1, "hash-b", command=["/nonexistent"], replaces=[v1.container])
    with pytest.raises(TaskFailed, match="no such file"):
        engine.deploy(broken, "node-1", cluster_id)
    # The old one was stopped for it, and runs again; nothing half-made stays.
    (only,) = engine.list_managed(cluster_id)
    assert (only["id"], only["state"]) == (old["id"], "running")
    assert only["started_at"] > old["started_at"]


def test_a_rollback_starts_the_kept_container_again(
    docker_client: Any, web_image: str, cluster_id: str
) -> None:
    engine = Engine(docker_client)
    v1 = deploy_task(web_image, hashed=True)
    old = engine.deploy(v1, "node-1", cluster_id).container
    v2 = next_revision(v1, "hash-b", replaces=[v1.container])
    new = engine.deploy(v2, "node-1", cluster_id).container
    back = v1.model_copy(
        update={"id": 9, "payload": v1.payload.model_copy(update={"replaces": [v2.container]})}  # type: ignore[union-attr]
    )
    again = engine.deploy(back, "node-1", cluster_id).container
    # The same container, started without a pull; its report says when and how often.
    assert (again["id"], again["state"], again["restarts"]) == (old["id"], "running", 0)
    assert again["started_at"] > old["started_at"] > time.time() - 60
    assert docker_client.containers.get(new["id"]).status == "exited"  # kept in turn


def test_replaces_leaves_missing_and_foreign_containers_alone(
    docker_client: Any, web_image: str, cluster_id: str
) -> None:
    engine = Engine(docker_client)
    foreign = docker_client.containers.run(
        web_image, name=f"not-docklet-{uuid.uuid4().hex[:8]}", detach=True
    )
    try:
        task = deploy_task(web_image, hashed=True, replaces=[foreign.name, "docklet.gone.1.x"])
        assert engine.deploy(task, "node-1", cluster_id).container["state"] == "running"
        foreign.reload()
        assert foreign.status == "running"
    finally:
        foreign.remove(force=True)


@pytest.fixture
def pushed(docker_client: Any, web_image: str, registry: str) -> Iterator[str]:
    """The web image in the registry under a fresh tag, and not on this node by that tag."""
    repository = f"{registry}/docklet-test/digest-{RUN_ID}"
    ref = dockerlab.push_to_registry(docker_client, web_image, repository.split("/", 1)[1], "v1")
    digests = docker_client.images.get(ref).attrs["RepoDigests"]
    dockerlab.remove_image(docker_client, ref)  # the deploy pulls it by tag
    try:
        yield ref
    finally:
        # Every reference this test made, so the session's image removal removes the image.
        for extra in [ref, *digests, *docker_client.images.get(web_image).attrs["RepoDigests"]]:
            if extra.startswith(repository):
                dockerlab.remove_image(docker_client, extra)


def test_a_deploy_reports_the_digest_it_runs(
    docker_client: Any, web_image: str, pushed: str, cluster_id: str
) -> None:
    engine = Engine(docker_client)
    by_tag = deploy_task(pushed, pull="missing", hashed=True)
    digest = engine.deploy(by_tag, "node-1", cluster_id).image_digest
    repository = pushed.rsplit(":", 1)[0]
    assert digest is not None and digest.startswith(f"{repository}@sha256:")
    # A digest reference is pulled by that digest when missing...
    dockerlab.remove_image(docker_client, digest)  # only the reference: the image is in use
    by_digest = next_revision(
        by_tag, "hash-b", image=digest, pull="missing", replaces=[by_tag.container]
    )
    deployed = engine.deploy(by_digest, "node-1", cluster_id)
    assert deployed.image_digest == digest and deployed.container["image"] == digest
    # ...and found on the node by it when present.
    again = next_revision(by_digest, "hash-c", pull="never", replaces=[by_digest.container])
    assert engine.deploy(again, "node-1", cluster_id).image_digest == digest
    # An image no registry gave a digest is reported by its id.
    local = engine.deploy(deploy_task(web_image), "node-1", cluster_id)
    assert local.image_digest == docker_client.images.get(web_image).id


def test_the_heartbeat_carries_evidence_of_young_and_failed_containers(
    docker_client: Any, web_image: str, cluster_id: str
) -> None:
    engine = Engine(docker_client)
    young = engine.deploy(deploy_task(web_image), "node-1", cluster_id).container
    crash = deploy_task(web_image, command=["sh", "-c", "echo boom; echo bang >&2; exit 3"])
    crash = crash.model_copy(update={"payload": crash.payload.model_copy(update={"restart": "no"})})  # type: ignore[union-attr]
    engine.deploy(crash, "node-1", cluster_id)
    wait_for(lambda: state_of(docker_client, crash.container) == "exited", 10, "the crash")
    seen = {c["name"]: c for c in engine.list_managed(cluster_id)}
    running = seen[young["name"]]
    assert running["started_at"] == pytest.approx(young["started_at"])
    assert running["restarts"] == 0 and running["logs"] is None  # nothing wrong: no logs
    exited = seen[crash.container]
    assert (exited["state"], exited["exit_code"]) == ("exited", 3)
    # Both streams; Docker does not keep their order when written in the same instant.
    assert sorted(exited["logs"].splitlines()) == ["bang", "boom"]
    assert exited["started_at"] > time.time() - 60


def test_an_unhealthy_container_carries_its_health_check_output(
    docker_client: Any, web_image: str, cluster_id: str
) -> None:
    engine = Engine(docker_client)
    check = {
        "test": "echo sick; exit 1",
        "interval": "1s",
        "timeout": "1s",
        "retries": 1,
        "start_period": "0s",
    }
    serve = ["sh", "-c", "echo serving; exec httpd -f -p 80 -h /www"]
    task = deploy_task(web_image, healthcheck=check, command=serve)
    engine.deploy(task, "node-1", cluster_id)

    def unhealthy() -> dict[str, Any] | None:
        (seen,) = engine.list_managed(cluster_id)
        return seen if seen["health"] == "unhealthy" else None

    seen = wait_for(unhealthy, 15, "the health check to fail")
    assert seen["health_log"] == "sick"
    assert seen["logs"] == "serving"


class Counting(Engine):
    """The real engine, counting the containers it inspects."""

    inspected = 0

    def _evidence_of(
        self, container_id: str, now: float, before: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        self.inspected += 1
        return super()._evidence_of(container_id, now, before)


def listed(docker_client: Any, cluster_id: str) -> dict[str, Any]:
    """The cluster's one container as Docker lists it (no inspect)."""
    (row,) = docker_client.api.containers(
        all=True, filters={"label": f"docklet.cluster={cluster_id}"}
    )
    return dict(row)


def test_steady_containers_cost_few_inspects(
    docker_client: Any, web_image: str, cluster_id: str
) -> None:
    engine = Counting(docker_client)
    engine.deploy(deploy_task(web_image), "node-1", cluster_id)
    row = listed(docker_client, cluster_id)
    started = engine.observe([row], time.time())[0]["started_at"]
    assert engine.inspected == 1

    def up(seconds: int) -> list[dict[str, Any]]:
        """The list row `seconds` after its start, and the moment: Docker's words for it."""
        return [{**row, "Status": f"Up {seconds} seconds"}]

    engine.observe(up(10), started + 10)  # read when up 10 s: trusted for 5 s more
    engine.observe(up(14), started + 14)
    assert engine.inspected == 2
    engine.observe(up(16), started + 16)  # no restart shows, but the read is old: again
    assert engine.inspected == 3
    (seen,) = engine.observe(up(20), started + 20)  # trusted till 24 s
    assert engine.inspected == 3 and seen["inspected_at"] == started + 16
    old = [{**row, "Status": "Up 2 hours", "Created": started - 7200}]
    (seen,) = engine.observe(old, started + 7200)  # old and running: the list row is enough
    assert engine.inspected == 3 and seen["started_at"] is None and seen["state"] == "running"


def test_a_young_container_is_inspected_again_when_it_restarted(
    docker_client: Any, web_image: str, cluster_id: str
) -> None:
    engine = Counting(docker_client)
    engine.deploy(deploy_task(web_image), "node-1", cluster_id)
    row = listed(docker_client, cluster_id)
    started = engine.observe([row], time.time())[0]["started_at"]

    def later(status: str) -> list[dict[str, Any]]:
        return [{**row, "Status": status}]

    # Docker's words for the uptime change every second; what inspect said still holds.
    engine.observe(later("Up 40 seconds"), started + 40)
    engine.observe(later("Up 50 seconds"), started + 50)
    engine.observe(later("Up 59 seconds"), started + 59)
    assert engine.inspected == 2
    engine.observe(later("Up 3 seconds"), started + 59.5)  # shorter than it was: restarted
    assert engine.inspected == 3


def test_the_same_words_after_a_crash_are_no_proof(
    docker_client: Any, web_image: str, cluster_id: str
) -> None:
    """A crash loop shows "Up Less than a second" again and again: each is inspected."""
    engine = Counting(docker_client)
    engine.deploy(deploy_task(web_image), "node-1", cluster_id)
    row = {**listed(docker_client, cluster_id), "Status": "Up Less than a second"}
    now = time.time()
    engine.observe([row], now)
    engine.observe([row], now + 5)
    engine.observe(
        [{**row, "State": "restarting", "Status": "Restarting (1) 1 second ago"}], now + 6
    )
    assert engine.inspected == 3


def test_a_kept_container_started_again_is_inspected_while_it_is_young(
    docker_client: Any, web_image: str, cluster_id: str
) -> None:
    """A rollback starts an old revision's kept container: its run is what the gate judges."""
    engine = Counting(docker_client)
    engine.deploy(deploy_task(web_image), "node-1", cluster_id)
    now = time.time()
    made_long_ago = {**listed(docker_client, cluster_id), "Created": now - YOUNG - 60}
    engine.observe([{**made_long_ago, "Status": "Up 5 seconds"}], now)
    assert engine.inspected == 1


def test_a_restart_leaves_its_exit_code_time_and_count(
    docker_client: Any, web_image: str, cluster_id: str
) -> None:
    """Running again, Docker's state forgets how the last run ended; its die event does not."""
    engine = Engine(docker_client)
    crash = deploy_task(web_image, command=["sh", "-c", "sleep 1; exit 3"])
    engine.deploy(crash, "node-1", cluster_id)

    def restarted_and_running() -> dict[str, Any] | None:
        (seen,) = engine.list_managed(cluster_id)
        return seen if seen["state"] == "running" and seen["restarts"] >= 1 else None

    seen = wait_for(restarted_and_running, 30, "Docker to restart it")
    assert seen["last_exit_code"] == 3 and seen["exit_code"] is None
    assert 0.9 <= seen["last_run"] < 10
    assert seen["started_at"] > seen["finished_at"] > seen["started_at"] - 60
    assert seen["inspected_at"] <= time.time()
