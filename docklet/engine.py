"""The agent's side of Docker: run tasks and list containers through the Engine API.

Every container Docklet makes carries `docklet.*` labels and the slot's
deterministic name, so a task run twice, or after an agent restart, finds
the container it made before instead of making a second one.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

import docker
import docker.errors
import requests.exceptions

from docklet import defaults
from docklet.errors import DockerUnavailable, DockletError
from docklet.spec import parse_duration, parse_port
from docklet.status import ContainerState

log = logging.getLogger(__name__)

CLUSTER_LABEL = "docklet.cluster"
_EXIT = re.compile(r"Exited \((-?\d+)\)")
_HEALTH = re.compile(r"\((healthy|unhealthy|health: starting)\)")


class TaskFailed(DockletError):
    """Docker refused the task; the message is Docker's own words."""


def _docker_errors(func: Any) -> Any:
    """Docker down → DockerUnavailable (retry later); Docker said no → TaskFailed."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise DockerUnavailable(f"Docker engine unreachable: {exc}") from None
        except docker.errors.APIError as exc:
            raise TaskFailed(_explain(exc)) from None
        except docker.errors.DockerException as exc:
            raise DockerUnavailable(f"Docker engine unreachable: {exc}") from None

    return wrapper


def _explain(exc: docker.errors.APIError) -> str:
    text = exc.explanation or str(exc)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return str(text).strip()


class Engine:
    """One Docker engine, reached through the docker SDK (API version negotiated)."""

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        self._client = client

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.from_env(version="auto", timeout=60)
            except docker.errors.DockerException as exc:
                raise DockerUnavailable(f"Docker engine unreachable: {exc}") from None
        return self._client

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
            all=True, filters={"label": f"{CLUSTER_LABEL}={cluster_id}"}
        )
        return [_from_list(row) for row in rows]

    @_docker_errors
    def deploy(self, task: dict[str, Any], node_id: str, cluster_id: str) -> dict[str, Any]:
        """Make the slot's container run this task's spec; returns it as observed."""
        spec, name = task["payload"], task["container"]
        existing = self._get(name)
        if existing is not None:
            self._check_ours(existing, cluster_id)
            if existing.labels.get("docklet.spec-hash") == spec["container_hash"]:
                if existing.status != ContainerState.RUNNING:
                    log.info("task %s: starting existing container %s", task["id"], name)
                    existing.start()
                    existing.reload()
                return observed(existing)
            log.info("task %s: replacing %s (spec changed)", task["id"], name)
            existing.stop()
            existing.remove(force=True)
        self._ensure_image(task["id"], spec["image"], spec.get("pull", "missing"))
        api = self.client.api
        options = _create_options(task, node_id, cluster_id)
        created = api.create_container(
            spec["image"],
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
        log.info("task %s: started %s (%s)", task["id"], name, container.short_id)
        return observed(container)

    @_docker_errors
    def stop(self, task: dict[str, Any], cluster_id: str) -> dict[str, Any] | None:
        container = self._get(task["container"])
        if container is None:
            return None
        self._check_ours(container, cluster_id)
        if ContainerState.is_live(container.status):
            container.stop()  # the container's own stop timeout (stop_grace_period)
            container.reload()
        return observed(container)

    @_docker_errors
    def remove(self, task: dict[str, Any], cluster_id: str) -> None:
        container = self._get(task["container"])
        if container is None:
            return
        self._check_ours(container, cluster_id)
        if ContainerState.is_live(container.status):
            container.stop()
        container.remove(force=True)

    def _get(self, name: str) -> Any:
        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None

    @staticmethod
    def _check_ours(container: Any, cluster_id: str) -> None:
        if container.labels.get(CLUSTER_LABEL) != cluster_id:
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


def _create_options(task: dict[str, Any], node_id: str, cluster_id: str) -> dict[str, Any]:
    spec = task["payload"]
    labels = {
        **spec.get("labels", {}),
        CLUSTER_LABEL: cluster_id,
        "docklet.app": task["app"],
        "docklet.slot": str(task["slot"]),
        "docklet.revision": str(task["revision"]),
        "docklet.task": str(task["id"]),
        "docklet.node": node_id,
        "docklet.spec-hash": spec["container_hash"],
    }
    bindings: dict[str, Any] = {}
    for text in spec.get("ports", []):
        p = parse_port(text)
        bindings[f"{p.container_port}/{p.protocol}"] = (
            (p.host_ip, p.host_port) if p.host_ip else p.host_port
        )
    binds = {}
    for text in spec.get("volumes", []):
        source, target, *mode = text.split(":")
        binds[source] = {"bind": target, "mode": mode[0] if mode else "rw"}
    grace = spec.get("stop_grace_period", defaults.STOP_TIMEOUT)
    options: dict[str, Any] = {
        "command": spec.get("command"),
        "environment": spec.get("env") or {},
        "labels": labels,
        "ports": [tuple(k.split("/")) for k in bindings],
        "volumes": [b["bind"] for b in binds.values()],
        "stop_timeout": max(1, round(parse_duration(grace))),
        "host": {
            "port_bindings": bindings,
            "binds": binds,
            "restart_policy": {"Name": spec.get("restart", "unless-stopped")},
        },
    }
    if spec.get("healthcheck"):
        options["healthcheck"] = _healthcheck(spec["healthcheck"])
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
