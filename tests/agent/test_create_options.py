"""What the agent asks Docker to create for a deploy task, as exact values (no Docker needed)."""

from __future__ import annotations

from typing import Any

import pytest

from docklet.agent.container import create_options, task_labels
from docklet.common.errors import TaskFailed
from docklet.common.status import TaskKind
from docklet.wire.protocol import ContainerSpec, LeasedTask

SECOND = 1_000_000_000  # nanoseconds
OURS = {"docklet.cluster": "c1", "docklet.app": "web"}  # what task_labels gives, in short


def spec(**fields: Any) -> ContainerSpec:
    return ContainerSpec.model_validate(
        {"image": "registry:5000/web:2", "container_hash": "h2", **fields}
    )


def deploy(payload: ContainerSpec, **fields: Any) -> LeasedTask:
    return LeasedTask.model_validate(
        {
            "id": 42,
            "kind": TaskKind.DEPLOY,
            "app": "web",
            "slot": 3,
            "revision": 7,
            "container": "docklet.web.3.h2",
            "payload": payload,
            "lease_token": "lease",
            "lease_seconds": 60,
            **fields,
        }
    )


def test_a_realistic_spec() -> None:
    web = spec(
        command=["httpd", "-f", "-p", "8080"],
        env={"GREETING": "hi", "EMPTY": ""},
        ports=["8080:80", "127.0.0.1:8443:443"],
        volumes=["/srv/data:/data", "logs:/var/log/web:ro"],
        labels={"team": "web", "docklet.app": "someone-else"},
        restart="on-failure",
        stop_grace_period="1m30s",
        pull="always",
        replaces=["docklet.web.3.h1"],
    )
    labels = task_labels(deploy(web), "node-1", "cluster-1")
    assert create_options(web, "docklet.web.3.h2", labels) == {
        "image": "registry:5000/web:2",
        "name": "docklet.web.3.h2",
        "command": ["httpd", "-f", "-p", "8080"],
        "environment": {"GREETING": "hi", "EMPTY": ""},
        "labels": {
            "team": "web",
            "docklet.app": "web",  # Docklet's own label wins over the spec's
            "docklet.cluster": "cluster-1",
            "docklet.slot": "3",
            "docklet.revision": "7",
            "docklet.task": "42",
            "docklet.node": "node-1",
            "docklet.spec-hash": "h2",
        },
        "ports": [("80", "tcp"), ("443", "tcp")],
        "volumes": ["/data", "/var/log/web"],
        "stop_timeout": 90,
        "host_config": {
            "port_bindings": {"80/tcp": 8080, "443/tcp": ("127.0.0.1", 8443)},
            "binds": {
                "/srv/data": {"bind": "/data", "mode": "rw"},
                "logs": {"bind": "/var/log/web", "mode": "ro"},
            },
            "restart_policy": {"Name": "on-failure"},
        },
    }


def test_task_labels_leave_out_what_the_task_does_not_say() -> None:
    task = deploy(spec(), slot=None, revision=None)
    assert task_labels(task, "node-1", "cluster-1") == {
        "docklet.cluster": "cluster-1",
        "docklet.app": "web",
        "docklet.task": "42",
        "docklet.node": "node-1",
        "docklet.spec-hash": "h2",
    }


@pytest.mark.parametrize(
    "command",
    [
        ["python", "-m", "http.server", "8000"],  # exec form: the argv as it is
        "python -m http.server 8000 >/dev/null 2>&1",  # shell form: the SDK splits it
    ],
)
def test_the_command_goes_to_docker_as_the_spec_wrote_it(command: list[str] | str) -> None:
    options = create_options(spec(command=command), "c", OURS)
    assert options["command"] == command


def test_a_healthcheck_in_nanoseconds() -> None:
    check = {
        "test": ["wget", "-q", "-O-", "http://localhost/health"],
        "interval": "10s",
        "timeout": "500ms",
        "retries": 5,
        "start_period": "1m",
    }
    options = create_options(spec(healthcheck=check), "c", OURS)
    assert options["healthcheck"] == {
        "test": ["CMD", "wget", "-q", "-O-", "http://localhost/health"],
        "interval": 10 * SECOND,
        "timeout": SECOND // 2,
        "retries": 5,
        "start_period": 60 * SECOND,
    }


@pytest.mark.parametrize(
    ("test", "sent"),
    [
        (
            "curl -f http://localhost/ || exit 1",
            ["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
        ),
        (["CMD", "true"], ["CMD", "true"]),
        (["CMD-SHELL", "true"], ["CMD-SHELL", "true"]),
        (["NONE"], ["NONE"]),
        (["true"], ["CMD", "true"]),
    ],
)
def test_a_healthcheck_test_in_each_form(test: list[str] | str, sent: list[str]) -> None:
    check = {"test": test, "interval": 30, "timeout": "30s", "retries": 3, "start_period": 0}
    assert create_options(spec(healthcheck=check), "c", OURS)["healthcheck"] == {
        "test": sent,
        "interval": 30 * SECOND,
        "timeout": 30 * SECOND,
        "retries": 3,
        "start_period": 0,
    }


def test_ipv6_and_udp_ports() -> None:
    options = create_options(
        spec(ports=["[::1]:5353:53/udp", "53/udp", "[2001:db8::1]:8080:80", "9000:9000/tcp"]),
        "c",
        OURS,
    )
    assert options["ports"] == [("53", "udp"), ("80", "tcp"), ("9000", "tcp")]
    assert options["host_config"]["port_bindings"] == {
        "53/udp": None,  # the last mapping of a port wins; no host port: Docker picks one
        "80/tcp": ("2001:db8::1", 8080),
        "9000/tcp": 9000,
    }


def test_defaults() -> None:
    assert create_options(spec(), "docklet.web.1.h2", OURS) == {
        "image": "registry:5000/web:2",
        "name": "docklet.web.1.h2",
        "command": None,  # the image's own
        "environment": {},
        "labels": OURS,
        "ports": [],
        "volumes": [],
        "stop_timeout": 10,
        "host_config": {
            "port_bindings": {},
            "binds": {},
            "restart_policy": {"Name": "unless-stopped"},
        },
    }  # and no healthcheck: the image's own, if it has one


@pytest.mark.parametrize(("grace", "timeout"), [(0, 1), (0.4, 1), ("2.6s", 3), (45, 45)])
def test_the_stop_timeout_is_whole_seconds_and_at_least_one(grace: Any, timeout: int) -> None:
    assert create_options(spec(stop_grace_period=grace), "c", OURS)["stop_timeout"] == timeout


def test_an_unusable_grace_period_fails_the_task() -> None:
    with pytest.raises(TaskFailed) as failed:
        create_options(spec(stop_grace_period="soon"), "c", OURS)
    assert failed.value.message == (
        "stop_grace_period: 'soon' is not a duration (try '10s', '1m30s', '500ms')"
    )
