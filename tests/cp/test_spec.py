"""App spec validation: what a user writing `apps/<name>.yaml` is told, and the hashes.

The file itself (bytes, YAML bounds, text as written, dump) is tests/cp/test_specfile.py; the
published schema and the examples are tests/cp/test_schema.py.
"""

from __future__ import annotations

import re

import pytest

from docklet.common import units
from docklet.common.errors import InvalidSpec
from docklet.cp.desired import spec, specfile

SOURCE = "apps/web.yaml"

REALISTIC = """\
name: web
image: registry.example.com:5000/shop/web:1.4.2
replicas: 3
state: stopped
command: ["nginx", "-g", "daemon off;"]
env:
  LOG_LEVEL: info
ports:
  - "8080:80"
  - "127.0.0.1:8443:443/tcp"
  - "9000"
volumes:
  - web-cache:/var/cache/nginx
  - /srv/web/conf:/etc/nginx/conf.d:ro
labels:
  team: frontend
restart: always
stop_grace_period: 1m30s
pull: always
healthcheck:
  test: ["CMD", "wget", "-qO-", "http://127.0.0.1/"]
  interval: 10s
  timeout: 2s
  retries: 5
  start_period: 500ms
placement:
  nodes: [edge-1, edge-2]
rollout:
  canary: 1
  max_parallel: 2
  min_healthy_time: 15s
  healthy_deadline: 2m
  progress_deadline: 10m
  auto_revert: false
"""


def with_lines(*extra: str) -> str:
    return "\n".join(["name: web", "image: nginx:1.27", *extra]) + "\n"


def error_for(text: str) -> str:
    with pytest.raises(InvalidSpec) as caught:
        specfile.load(text, source=SOURCE)
    return caught.value.message


# -- valid specs -------------------------------------------------------------------


def test_realistic_spec_keeps_every_value() -> None:
    app = specfile.load(REALISTIC, source=SOURCE)
    assert app.name == "web"
    assert app.replicas == 3
    assert app.state == "stopped"
    assert app.ports == ["8080:80", "127.0.0.1:8443:443/tcp", "9000"]
    assert app.healthcheck is not None and app.healthcheck.retries == 5
    assert app.placement.nodes == ["edge-1", "edge-2"]
    assert app.rollout.max_parallel == 2 and app.rollout.auto_revert is False
    assert app.stop_grace_period == "1m30s"


def test_round_trip_through_to_yaml_is_the_same_spec() -> None:
    app = specfile.load(REALISTIC, source=SOURCE)
    again = specfile.load(specfile.to_yaml(app), source=SOURCE)
    assert again == app
    assert "canary" not in specfile.to_yaml(app)  # a default, left out
    assert again.revision_hash() == app.revision_hash()


def test_minimal_spec_gets_documented_defaults() -> None:
    app = specfile.load(with_lines(), source=SOURCE)
    assert (app.replicas, app.state, app.restart, app.pull) == (
        1,
        "running",
        "unless-stopped",
        "missing",
    )
    assert specfile.to_yaml(app) == "name: web\nimage: nginx:1.27\n"


def test_durations_parse_to_seconds() -> None:
    assert units.parse_duration("1m30s") == 90.0
    assert units.parse_duration("500ms") == 0.5
    assert units.parse_duration("1h") == 3600.0
    assert units.parse_duration(12) == 12.0


# -- invalid specs: each message names the file and the field ----------------------


@pytest.mark.parametrize(
    ("lines", "field", "line"),
    [
        (["imagee: nginx"], "imagee", 3),
        (["rollout:", "  canry: 2"], "rollout.canry", 4),
        (
            ["healthcheck:", "  test: [true]", "  interval: 5s", "  retry: 3"],
            "healthcheck.retry",
            6,
        ),
    ],
)
def test_unknown_key_is_named_with_its_path(lines: list[str], field: str, line: int) -> None:
    message = error_for(with_lines(*lines))
    assert message.startswith(f"{SOURCE}:{line}: {field}: unknown key")
    assert "check its spelling" in message


def test_wrong_type_names_the_field() -> None:
    message = error_for(with_lines("replicas: lots"))
    assert message.startswith(f"{SOURCE}:3: replicas: ")
    assert "integer" in message


def test_env_numbers_and_booleans_become_strings_as_in_a_shell() -> None:
    loaded = specfile.load(with_lines("env:", "  WORKERS: 4", "  DEBUG: true", "  RATIO: 0.5"))
    assert loaded.env == {"WORKERS": "4", "DEBUG": "true", "RATIO": "0.5"}


def test_parsed_json_numbers_and_booleans_become_strings() -> None:
    data = {"name": "web", "image": "nginx", "env": {"A": 1, "B": True, "C": 0.5}}
    assert spec.validate(data).env == {"A": "1", "B": "true", "C": "0.5"}


def test_env_values_that_are_lists_are_rejected() -> None:
    assert "env.HOSTS" in error_for(with_lines("env:", "  HOSTS: [a, b]"))


@pytest.mark.parametrize("name", ["Web", "my_app", "-web", "web-", "a" * 64])
def test_bad_name_is_rejected(name: str) -> None:
    message = error_for(f"name: '{name}'\nimage: nginx\n")
    assert f"{SOURCE}:1: name: " in message
    assert repr(name) in message


def test_longest_allowed_name_is_63_characters() -> None:
    assert specfile.load(f"name: {'a' * 63}\nimage: nginx\n").name == "a" * 63


@pytest.mark.parametrize(
    "image",
    [
        "nginx:",
        "Nginx",
        "library/Nginx:1",
        "nginx:1 .27",
        "nginx@sha256:abc",
        ":latest",
        "UPPER/Case",
    ],
)
def test_bad_image_reference_is_rejected(image: str) -> None:
    message = error_for(f"name: web\nimage: '{image}'\n")
    assert f"{SOURCE}:2: image: {image!r}" in message


@pytest.mark.parametrize(
    "image",
    [
        "nginx",
        "nginx:1.27-alpine",
        "library/nginx",
        "localhost:5000/team/app:v2",
        "ghcr.io/org/app@sha256:" + "a" * 64,
        "registry.example.com/a/b/c:tag_1.0",
    ],
)
def test_good_image_reference_is_accepted(image: str) -> None:
    assert specfile.load(f"name: web\nimage: '{image}'\n").image == image


@pytest.mark.parametrize("port", ["99999:80", "8080:0", "80:70000/udp"])
def test_port_out_of_range_says_so(port: str) -> None:
    message = error_for(with_lines("ports:", f"  - '{port}'"))
    assert "ports" in message
    assert port in message
    assert "1 to 65535" in message


def test_malformed_port_is_rejected() -> None:
    message = error_for(with_lines("ports:", "  - '80:80/sctp'"))
    assert "ports.0: '80:80/sctp'" in message


@pytest.mark.parametrize("duration", ["10 seconds", "10", "1.5.3s", "-5s", "5d"])
def test_bad_duration_says_how_to_write_one(duration: str) -> None:
    message = error_for(with_lines(f"stop_grace_period: '{duration}'"))
    assert f"{SOURCE}:3: stop_grace_period: " in message
    assert "is not a duration" in message
    assert "'10s'" in message


def test_negative_number_duration_is_rejected() -> None:
    message = error_for(with_lines("rollout:", "  min_healthy_time: -1"))
    assert "rollout.min_healthy_time" in message
    assert "not a duration from 0" in message


def test_reserved_docklet_label_is_rejected() -> None:
    message = error_for(with_lines("labels:", "  docklet.app: other"))
    assert "labels: " in message
    assert "'docklet.app'" in message
    assert "reserved" in message


def test_state_removed_says_to_delete_the_file() -> None:
    message = error_for(with_lines("state: removed"))
    assert f"{SOURCE}:3: state: " in message
    assert "delete its file" in message


@pytest.mark.parametrize("text", ["- name: web\n  image: nginx\n", "just a string\n", "", "42\n"])
def test_non_mapping_yaml_is_rejected(text: str) -> None:
    message = error_for(text)
    assert message == f"{SOURCE}: an app spec is a mapping of keys to values"


def test_yaml_syntax_error_gives_file_and_line() -> None:
    text = "name: web\nimage: nginx\nenv:\n  A: b\n   C: d\n"
    message = error_for(text)
    assert message.startswith(f"{SOURCE}:5: not valid YAML: ")


def test_several_problems_are_all_reported() -> None:
    message = error_for("name: Web\nimage: nginx\nreplicas: -1\ncolour: red\n")
    assert "name: 'Web'" in message
    assert "replicas: " in message
    assert "colour: unknown key" in message


def test_invalid_spec_is_a_400_with_stable_code() -> None:
    with pytest.raises(InvalidSpec) as caught:
        specfile.load(with_lines("replicas: lots"), source=SOURCE)
    assert (caught.value.status, caught.value.code) == (400, "invalid_spec")


# -- names and tags from `docklet run IMAGE` ---------------------------------------


@pytest.mark.parametrize(
    ("image", "name"),
    [
        ("nginx", "nginx"),
        ("nginx:1.27", "nginx"),
        ("library/redis:7", "redis"),
        ("localhost:5000/team/app:1.2", "app"),
        ("registry.example.com:5000/shop/api", "api"),
        ("ghcr.io/org/my_app@sha256:" + "a" * 64, "my-app"),
        ("ghcr.io/org/web:2@sha256:" + "b" * 64, "web"),
    ],
)
def test_default_name_is_the_last_path_component(image: str, name: str) -> None:
    assert spec.default_name(image) == name


def test_default_name_of_a_very_long_image_is_a_valid_name() -> None:
    image = "registry.example.com/" + "a" * 62 + "-b:1"
    name = spec.default_name(image)
    assert re.fullmatch(spec.NAME_PATTERN, name), name


@pytest.mark.parametrize(
    ("image", "full"),
    [
        ("nginx", "nginx:latest"),
        ("nginx:1.27", "nginx:1.27"),
        ("localhost:5000/nginx", "localhost:5000/nginx:latest"),
        ("localhost:5000/nginx:1", "localhost:5000/nginx:1"),
        ("ghcr.io/org/team/app", "ghcr.io/org/team/app:latest"),
        ("nginx@sha256:" + "c" * 64, "nginx@sha256:" + "c" * 64),
    ],
)
def test_with_default_tag_adds_latest_only_when_untagged(image: str, full: str) -> None:
    assert spec.with_default_tag(image) == full


# -- hashes ------------------------------------------------------------------------


def test_revision_hash_ignores_state_but_not_image() -> None:
    running = specfile.load(with_lines("state: running"))
    stopped = specfile.load(with_lines("state: stopped"))
    newer = specfile.load("name: web\nimage: nginx:1.28\n")
    assert running.revision_hash() == stopped.revision_hash()
    assert running.revision_hash() != newer.revision_hash()


def test_revision_hash_ignores_formatting_and_explicit_defaults() -> None:
    terse = specfile.load(with_lines())
    verbose = specfile.load("# the web app\nimage: 'nginx:1.27'\nname: \"web\"\nreplicas: 1\n")
    assert terse.revision_hash() == verbose.revision_hash()


def test_container_hash_ignores_replicas_but_not_env() -> None:
    one = specfile.load(with_lines("replicas: 1"))
    five = specfile.load(with_lines("replicas: 5"))
    with_env = specfile.load(with_lines("replicas: 1", "env: {A: b}"))
    assert one.container_hash() == five.container_hash()
    assert one.revision_hash() != five.revision_hash()
    assert one.container_hash() != with_env.container_hash()


# -- values Docker would refuse at deploy time --------------------------------------


@pytest.mark.parametrize(
    ("lines", "field"),
    [
        (['env: {"A\\0B": x}'], "env.'A\\x00B'"),
        (['env: {A: "x\\0y"}'], "env.A"),
        (['labels: {"a\\0": x}'], "labels.'a\\x00'"),
        (['labels: {a: "x\\0"}'], "labels.a"),
        (['command: [sh, "x\\0"]'], "command.1"),
        (['command: "sleep\\0"'], "command"),
        (['healthcheck: {test: [CMD, "x\\0"]}'], "healthcheck.test.1"),
        (['placement: {nodes: ["n\\0"]}'], "placement.nodes.0"),
    ],
)
def test_nul_is_refused_in_every_string(lines: list[str], field: str) -> None:
    message = error_for(with_lines(*lines))
    assert f"{SOURCE}:3: {field}: " in message
    assert "contains a NUL character" in message


def test_lone_surrogate_from_an_escape_is_refused() -> None:
    message = error_for(with_lines('env: {A: "\\ud800"}'))
    assert message.startswith(f"{SOURCE}:3: env.A: Input should be a valid string")


def test_equals_sign_in_env_name_is_refused() -> None:
    assert "env.A=B: environment variable name 'A=B' contains '='" in error_for(
        with_lines("env: {A=B: x}")
    )


@pytest.mark.parametrize(
    ("port", "problem"),
    [
        ("999.999.999.999:80:80", "999.999.999.999 is not an IP address"),
        ("1.2.3.4:80", "is not valid"),
        ("[1.2.3.4]:80:80", "only an IPv6 address goes in brackets"),
        ("[::g]:80:80", "is not valid"),
        ("[1::2::3]:80:80", "[1::2::3] is not an IP address"),
        ("８０:80", "is not valid"),
        ("٨٠", "is not valid"),
    ],
)
def test_bad_port_mapping_is_refused(port: str, problem: str) -> None:
    message = error_for(with_lines("ports:", f"  - '{port}'"))
    assert f"{SOURCE}:4: ports.0: " in message
    assert problem in message


def test_ipv6_host_ip_in_brackets_is_accepted() -> None:
    assert specfile.load(with_lines("ports: ['[::1]:8080:80/udp']")).ports == ["[::1]:8080:80/udp"]
    mapping = units.parse_port("[::1]:8080:80/udp")
    assert (mapping.host_ip, mapping.host_port, mapping.container_port) == ("::1", 8080, 80)
    assert units.parse_port("127.0.0.1:8443:443").host_ip == "127.0.0.1"


@pytest.mark.parametrize("image", ["nginx:ü", "nginx:1٠", "nginx:1\n", "ngïnx"])
def test_non_ascii_image_reference_is_refused(image: str) -> None:
    assert f"{SOURCE}:2: image: " in error_for(f"name: web\nimage: {image!r}\n".replace("'", '"'))


@pytest.mark.parametrize("volume", ["data\\0:/x", "data:/x\\0", "da\\nta:/x", "data:/x\\ty"])
def test_control_characters_in_volumes_are_refused(volume: str) -> None:
    message = error_for(with_lines(f'volumes: ["{volume}"]'))
    assert f"{SOURCE}:3: volumes.0: " in message


@pytest.mark.parametrize("duration", ["１s", "1٠s", "1s" * 40])
def test_duration_is_ascii_and_short(duration: str) -> None:
    assert "is not a duration" in error_for(with_lines(f"stop_grace_period: {duration}"))


# -- every list, map and string is bounded; numbers are finite ---------------------


def spec_error(**fields: object) -> str:
    with pytest.raises(InvalidSpec) as caught:
        spec.validate({"name": "web", "image": "nginx", **fields}, source="request")
    return caught.value.message


@pytest.mark.parametrize(
    ("fields", "field", "problem"),
    [
        ({"env": {f"K{i}": "v" for i in range(1001)}}, "env", "at most 1000 items"),
        ({"labels": {f"k{i}": "v" for i in range(257)}}, "labels", "at most 256 items"),
        ({"ports": [str(i) for i in range(1, 102)]}, "ports", "at most 100 items"),
        ({"volumes": [f"v{i}:/v" for i in range(101)]}, "volumes", "at most 100 items"),
        ({"command": ["x"] * 1001}, "command", "at most 1000 items"),
        ({"healthcheck": {"test": ["x"] * 1001}}, "healthcheck.test", "at most 1000 items"),
        ({"placement": {"nodes": ["n"] * 101}}, "placement.nodes", "at most 100 items"),
        ({"env": {"K": "v" * (64 * 1024 + 1)}}, "env.K", "at most 65536 characters"),
        ({"env": {"K" * 1025: "v"}}, "env.'KKKK", "at most 1024 characters"),
        ({"labels": {"k" * 1025: "v"}}, "labels.'kkkk", "at most 1024 characters"),
        ({"labels": {"k": "v" * (64 * 1024 + 1)}}, "labels.k", "at most 65536 characters"),
        ({"command": "x" * (64 * 1024 + 1)}, "command", "at most 65536 characters"),
        ({"command": ["x" * (64 * 1024 + 1)]}, "command.0", "at most 65536 characters"),
        ({"volumes": ["v:/" + "x" * 5000]}, "volumes.0", "at most 4096 characters"),
        ({"placement": {"nodes": ["n" * 254]}}, "placement.nodes.0", "at most 253 characters"),
        ({"labels": {"": "v"}}, "labels.''", "at least 1 character"),
    ],
)
def test_collections_and_strings_are_bounded(
    fields: dict[str, object], field: str, problem: str
) -> None:
    message = spec_error(**fields)
    assert message.startswith(f"request: {field}")
    assert problem in message


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"replicas": float("nan")}, "replicas"),
        ({"replicas": float("inf")}, "replicas"),
        ({"stop_grace_period": float("nan")}, "stop_grace_period"),
        ({"stop_grace_period": float("inf")}, "stop_grace_period"),
        ({"rollout": {"canary": 10**9}}, "rollout.canary"),
        ({"rollout": {"max_parallel": 10**9}}, "rollout.max_parallel"),
        ({"healthcheck": {"test": "true", "retries": 10**9}}, "healthcheck.retries"),
    ],
)
def test_numbers_must_be_finite_and_bounded(fields: dict[str, object], field: str) -> None:
    assert spec_error(**fields).startswith(f"request: {field}: ")


@pytest.mark.parametrize(
    "line", ["replicas: .nan", "replicas: 1.0e+400", "stop_grace_period: 1.0e+400"]
)
def test_yaml_infinity_and_nan_are_refused(line: str) -> None:
    assert error_for(with_lines(line)).startswith(f"{SOURCE}:3: ")


# -- errors name the line of the file -----------------------------------------------


def test_field_error_names_its_line() -> None:
    message = error_for(with_lines("env:", "  A: b", "replicas: 5000"))
    assert message == f"{SOURCE}:5: replicas: Input should be less than or equal to 1000"


def test_each_problem_names_its_own_line() -> None:
    text = with_lines("ports:", "  - '80'", "  - '80:80/sctp'", "env:", '  "A=B": x', "colour: red")
    message = error_for(text)
    assert f"{SOURCE}:5: ports.1: '80:80/sctp' is not valid" in message
    assert f"{SOURCE}:7: env.A=B: environment variable name" in message
    assert f"{SOURCE}:8: colour: unknown key" in message


def test_missing_field_names_the_mapping() -> None:
    assert error_for("name: web\n").startswith(f"{SOURCE}:1: image: Field required")


def test_data_not_from_yaml_keeps_the_plain_description() -> None:
    assert spec_error(replicas=5000) == (
        "request: replicas: Input should be less than or equal to 1000"
    )
