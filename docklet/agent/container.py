"""The container a deploy task asks Docker for, as plain data: no Docker client here.

`create_options` turns a task's ContainerSpec into the keyword arguments of
the SDK's low-level `create_container` (and, under `host_config`, of
`create_host_config`), so what Docklet asks of Docker is tested as an exact
value without an engine, and the engine only sends it.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping
from typing import Any

from docklet.common.errors import TaskFailed
from docklet.common.units import parse_duration, parse_port
from docklet.wire.protocol import ContainerSpec, Label, LeasedTask, SecretRef

NANOSECONDS = 1_000_000_000  # Docker's healthcheck durations are in these
SECRET_FILE_MODE = 0o400  # read by the container's root user only, as Swarm's default owner

Values = Mapping[tuple[str, int], str]  # (secret, version) → value: what a lease carries


def task_labels(task: LeasedTask, node_id: str, cluster_id: str) -> dict[str, str]:
    """Docklet's own labels on a task's container: whose it is and what made it."""
    ours = {
        Label.CLUSTER: cluster_id,
        Label.APP: task.app,
        Label.SLOT: task.slot,
        Label.REVISION: task.revision,
        Label.TASK: task.id,
        Label.NODE: node_id,
        Label.SPEC_HASH: task.payload.container_hash if task.payload else None,
    }
    return {k.value: str(v) for k, v in ours.items() if v is not None}


def create_options(
    spec: ContainerSpec, name: str, labels: Mapping[str, str], secrets: Values | None = None
) -> dict[str, Any]:
    """`create_container`'s keyword arguments for `spec`; `host_config` holds the host part's.

    `labels` are Docklet's own (task_labels): they win over the spec's, so
    an app cannot pass its containers off as another's. `secrets` are the values
    the task's lease carries, for the env values that are secrets.
    """
    bindings = _port_bindings(spec.ports)
    binds = _binds(spec.volumes)
    try:
        grace = parse_duration(spec.stop_grace_period)
    except ValueError as exc:
        raise TaskFailed(f"stop_grace_period: {exc}") from None
    options: dict[str, Any] = {
        "image": spec.image,
        "name": name,
        "command": spec.command,  # a string is split by the SDK as a shell would
        "environment": _environment(spec.env, secrets or {}),
        "labels": {**spec.labels, **labels},
        "ports": [tuple(k.split("/")) for k in bindings],
        "volumes": [b["bind"] for b in binds.values()],
        "stop_timeout": max(1, round(grace)),  # whole seconds, at least one
        "host_config": {
            "port_bindings": bindings,
            "binds": binds,
            "restart_policy": {"Name": spec.restart},
        },
    }
    if spec.healthcheck:
        options["healthcheck"] = _healthcheck(spec.healthcheck)
    return options


def _value(values: Values, name: str, version: int) -> str:
    try:
        return values[(name, version)]
    except KeyError:
        raise TaskFailed(f"secret {name} v{version} did not come with the task") from None


def _environment(env: Mapping[str, str | SecretRef], values: Values) -> dict[str, str]:
    return {
        key: value if isinstance(value, str) else _value(values, value.secret, value.version)
        for key, value in env.items()
    }


def secret_archive(spec: ContainerSpec, values: Values) -> bytes | None:
    """The spec's secret files as a tar for `put_archive(container, "/")`, before it starts
    (None: it has none). Only files: Docker makes their folders."""
    if not spec.secrets:
        return None
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in spec.secrets:
            data = _value(values, item.name, item.version).encode()
            info = tarfile.TarInfo(item.target.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), SECRET_FILE_MODE, 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _port_bindings(ports: list[str]) -> dict[str, Any]:
    """`80/tcp` → the host port, or (host IP, host port) when the mapping names an address."""
    bindings: dict[str, Any] = {}
    for text in ports:
        p = parse_port(text)
        bindings[f"{p.container_port}/{p.protocol}"] = (
            (p.host_ip, p.host_port) if p.host_ip else p.host_port
        )
    return bindings


def _binds(volumes: list[str]) -> dict[str, dict[str, str]]:
    """`SOURCE:TARGET[:MODE]` → {source: {bind, mode}}, read-write unless it says."""
    binds = {}
    for text in volumes:
        source, target, *mode = text.split(":")
        binds[source] = {"bind": target, "mode": mode[0] if mode else "rw"}
    return binds


def _healthcheck(hc: dict[str, Any]) -> dict[str, Any]:
    """A shell string runs under CMD-SHELL, a bare list under CMD; durations in nanoseconds."""
    test = hc["test"]
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    elif test and test[0] not in ("CMD", "CMD-SHELL", "NONE"):
        test = ["CMD", *test]
    return {
        "test": test,
        "interval": int(parse_duration(hc["interval"]) * NANOSECONDS),
        "timeout": int(parse_duration(hc["timeout"]) * NANOSECONDS),
        "retries": hc["retries"],
        "start_period": int(parse_duration(hc["start_period"]) * NANOSECONDS),
    }
