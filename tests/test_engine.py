"""The agent's Docker side, against the real engine."""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from collections.abc import Iterator
from typing import Any

import dockerlab
import pytest
from conftest import RUN_ID

from docklet.engine import Engine, TaskFailed
from docklet.errors import DockerUnavailable
from docklet.protocol import ContainerSpec, LeasedTask
from docklet.status import TaskKind

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
    for c in docker_client.containers.list(all=True, filters={"label": f"docklet.cluster={cid}"}):
        c.remove(force=True)


def deploy_task(image: str, task_id: int = 1, **spec: Any) -> LeasedTask:
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
        container=f"docklet.{app}.1",
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
