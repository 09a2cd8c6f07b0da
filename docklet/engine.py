"""The agent's side of Docker: run tasks and list containers through the Engine API.

Every container Docklet makes carries `docklet.*` labels and the slot's
deterministic name, so a task run twice, or after an agent restart, finds
the container it made before instead of making a second one.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import docker
import docker.errors

from docklet import defaults
from docklet.errors import DockerUnavailable, DockletError
from docklet.protocol import ContainerSpec, Label, LeasedTask
from docklet.spec import parse_duration, parse_port
from docklet.status import ContainerState

log = logging.getLogger(__name__)

DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"  # what the SDK uses without DOCKER_HOST
_EXIT = re.compile(r"Exited \((-?\d+)\)")
_HEALTH = re.compile(r"\((healthy|unhealthy|health: starting)\)")

P = ParamSpec("P")
R = TypeVar("R")


class TaskFailed(DockletError):
    """Docker refused the task; the message is Docker's own words."""


def _docker_errors(
    func: Callable[Concatenate[Engine, P], R],
) -> Callable[Concatenate[Engine, P], R]:
    """Docker down → DockerUnavailable (retry later); Docker said no → TaskFailed.

    The one boundary between the SDK and Docklet. The SDK's transport errors
    (requests' exceptions, which are OSErrors) read like a traceback, so the
    message says where the engine was expected and the raw text is kept aside
    for the agent's log.
    """

    @functools.wraps(func)
    def wrapper(engine: Engine, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(engine, *args, **kwargs)
        except docker.errors.APIError as exc:
            raise TaskFailed(_explain(exc)) from None
        except (OSError, docker.errors.DockerException) as exc:
            raise engine.unavailable(exc) from None

    return wrapper


def _explain(exc: docker.errors.APIError) -> str:
    text = exc.explanation or str(exc)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return str(text).strip()


class Engine:
    """One Docker engine, reached through the docker SDK (API version negotiated).

    `url` is where the engine is expected (DOCKER_HOST, else the default
    socket): it names the engine in messages people read. The SDK client is
    made on first use, so an agent starts even while Docker is down.
    """

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        *,
        url: str | None = None,
        timeout: float = defaults.DOCKER_TIMEOUT,
        max_pool_size: int = defaults.AGENT_CONCURRENCY + 4,
    ) -> None:
        self._client = client
        self._explicit_url = url
        self.url = url or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL
        self.timeout = timeout
        self.max_pool_size = max_pool_size

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = self._connect()
            except (OSError, docker.errors.DockerException) as exc:
                raise self.unavailable(exc) from None
        return self._client

    def _connect(self) -> docker.DockerClient:
        # One pooled connection per task running at once, or calls queue for one.
        options: dict[str, Any] = {
            "version": "auto",
            "timeout": self.timeout,
            "max_pool_size": self.max_pool_size,
        }
        if self._explicit_url:
            return docker.DockerClient(base_url=self._explicit_url, **options)
        return docker.from_env(**options)  # DOCKER_HOST, DOCKER_TLS_VERIFY, ...

    def unavailable(self, exc: BaseException) -> DockerUnavailable:
        """What to tell a person when the engine does not answer; the SDK's text is a detail."""
        # requests' Timeout classes cannot be named without importing requests.
        if "Timeout" in type(exc).__name__:
            message = f"Docker engine at {self.url} did not answer within {self.timeout:g}s"
        else:
            message = f"Docker engine not answering at {self.url}"
        return DockerUnavailable(message, detail=f"{type(exc).__name__}: {exc}")

    @_docker_errors
    def ping(self) -> None:
        self.client.ping()

    @_docker_errors
    def info(self) -> dict[str, Any]:
        info = self.client.info()
        return {
            "engine_id": info["ID"],
            "hostname": info["Name"],
            "docker_version": info.get("ServerVersion"),
            "api_version": self.client.api.api_version,
        }

    @_docker_errors
    def list_managed(self, cluster_id: str) -> list[dict[str, Any]]:
        """Every container of this cluster, running or not; raises if Docker is down."""
        rows = self.client.api.containers(
            all=True, filters={"label": f"{Label.CLUSTER}={cluster_id}"}
        )
        return [_from_list(row) for row in rows]

    @_docker_errors
    def deploy(self, task: LeasedTask, node_id: str, cluster_id: str) -> dict[str, Any]:
        """Make the slot's container run this task's spec; returns it as observed."""
        spec, name = task.payload, task.container
        if spec is None:
            raise TaskFailed(f"deploy task {task.id} carries no container spec")
        existing = self._get(name)
        if existing is not None:
            self._check_ours(existing, cluster_id)
            if existing.labels.get(Label.SPEC_HASH) == spec.container_hash:
                if existing.status != ContainerState.RUNNING:
                    log.info("task %s: starting existing container %s", task.id, name)
                    existing.start()
                    existing.reload()
                return observed(existing)
            log.info("task %s: replacing %s (spec changed)", task.id, name)
            _stop(existing)
            existing.remove(force=True)
        self._ensure_image(task.id, spec.image, spec.pull)
        api = self.client.api
        options = _create_options(task, spec, node_id, cluster_id)
        created = api.create_container(
            spec.image,
            name=name,
            host_config=api.create_host_config(**options.pop("host")),
            **options,
        )
        container = self.client.containers.get(created["Id"])
        try:
            container.start()
        except docker.errors.APIError:
            container.remove(force=True)  # a retry recreates it; nothing half-made stays
            raise
        container.reload()
        log.info("task %s: started %s (%s)", task.id, name, container.short_id)
        return observed(container)

    @_docker_errors
    def stop(self, task: LeasedTask, cluster_id: str) -> dict[str, Any] | None:
        container = self._get(task.container)
        if container is None:
            return None
        self._check_ours(container, cluster_id)
        if ContainerState.is_live(container.status):
            _stop(container)
            container.reload()
        return observed(container)

    @_docker_errors
    def remove(self, task: LeasedTask, cluster_id: str) -> None:
        container = self._get(task.container)
        if container is None:
            return
        self._check_ours(container, cluster_id)
        if ContainerState.is_live(container.status):
            _stop(container)
        container.remove(force=True)

    def _get(self, name: str) -> Any:
        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None

    @staticmethod
    def _check_ours(container: Any, cluster_id: str) -> None:
        if container.labels.get(Label.CLUSTER) != cluster_id:
            raise TaskFailed(
                f"a container named {container.name} exists that this Docklet does not manage;"
                " rename or remove it"
            )

    def _ensure_image(self, task_id: int, image: str, pull: str) -> None:
        if pull != "always":
            try:
                self.client.images.get(image)
                return
            except docker.errors.ImageNotFound:
                if pull == "never":
                    raise TaskFailed(
                        f"image {image} is not on this node and the pull policy is 'never'"
                    ) from None
        log.info("task %s: pulling %s", task_id, image)
        try:
            self.client.images.pull(image)
        except docker.errors.APIError as exc:
            raise TaskFailed(f"pull {image}: {_explain(exc)}") from None


def _stop(container: Any) -> None:
    """`docker stop` with the container's own grace period (its stop_grace_period).

    Passing it explicitly makes the SDK wait that much longer than its usual
    call timeout, so a long grace period is not mistaken for a hung engine.
    """
    grace = (container.attrs.get("Config") or {}).get("StopTimeout")
    if grace is None:
        container.stop()
    else:
        container.stop(timeout=grace)


def _create_options(
    task: LeasedTask, spec: ContainerSpec, node_id: str, cluster_id: str
) -> dict[str, Any]:
    ours = {
        Label.CLUSTER: cluster_id,
        Label.APP: task.app,
        Label.SLOT: task.slot,
        Label.REVISION: task.revision,
        Label.TASK: task.id,
        Label.NODE: node_id,
        Label.SPEC_HASH: spec.container_hash,
    }
    labels = {**spec.labels, **{k.value: str(v) for k, v in ours.items() if v is not None}}
    bindings: dict[str, Any] = {}
    for text in spec.ports:
        p = parse_port(text)
        bindings[f"{p.container_port}/{p.protocol}"] = (
            (p.host_ip, p.host_port) if p.host_ip else p.host_port
        )
    binds = {}
    for text in spec.volumes:
        source, target, *mode = text.split(":")
        binds[source] = {"bind": target, "mode": mode[0] if mode else "rw"}
    try:
        grace = parse_duration(spec.stop_grace_period)
    except ValueError as exc:
        raise TaskFailed(f"stop_grace_period: {exc}") from None
    options: dict[str, Any] = {
        "command": spec.command,
        "environment": spec.env,
        "labels": labels,
        "ports": [tuple(k.split("/")) for k in bindings],
        "volumes": [b["bind"] for b in binds.values()],
        "stop_timeout": max(1, round(grace)),
        "host": {
            "port_bindings": bindings,
            "binds": binds,
            "restart_policy": {"Name": spec.restart},
        },
    }
    if spec.healthcheck:
        options["healthcheck"] = _healthcheck(spec.healthcheck)
    return options


def _healthcheck(hc: dict[str, Any]) -> dict[str, Any]:
    test = hc["test"]
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    elif test and test[0] not in ("CMD", "CMD-SHELL", "NONE"):
        test = ["CMD", *test]
    ns = 1_000_000_000
    return {
        "test": test,
        "interval": int(parse_duration(hc["interval"]) * ns),
        "timeout": int(parse_duration(hc["timeout"]) * ns),
        "retries": hc["retries"],
        "start_period": int(parse_duration(hc["start_period"]) * ns),
    }


def observed(container: Any) -> dict[str, Any]:
    """A container as the CP records it, from an inspected container."""
    state = container.attrs.get("State", {})
    return {
        "id": container.id,
        "name": container.name,
        "image": container.attrs.get("Config", {}).get("Image", ""),
        "state": state.get("Status", container.status),
        "health": (state.get("Health") or {}).get("Status"),
        "exit_code": state.get("ExitCode"),
        "restarts": container.attrs.get("RestartCount", 0),
        "labels": container.labels,
    }


def _from_list(row: dict[str, Any]) -> dict[str, Any]:
    """A container as the CP records it, from one row of a list call (no inspect)."""
    status = row.get("Status", "")
    exit_code = _EXIT.search(status)
    health = _HEALTH.search(status)
    return {
        "id": row["Id"],
        "name": (row.get("Names") or ["/?"])[0].lstrip("/"),
        "image": row.get("Image", ""),
        "state": row.get("State", ContainerState.UNKNOWN),
        "health": health.group(1).replace("health: ", "") if health else None,
        "exit_code": int(exit_code.group(1)) if exit_code else None,
        "restarts": 0,
        "labels": row.get("Labels") or {},
    }
