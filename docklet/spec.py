"""The app spec: one `apps/<name>.yaml` file in the desired-state repository.

`AppSpec` is the single source of the format: validation, defaults and the
published JSON Schema (`schemas/app.schema.json`, written by
`python -m docklet.spec`) all come from it.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from docklet.errors import InvalidSpec
from docklet.status import DesiredState

NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
# Docker's reference grammar, simplified: [registry[:port]/]path[:tag][@digest].
IMAGE_PATTERN = (
    r"^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
PORT_PATTERN = r"^(?:(?:\d{1,3}(?:\.\d{1,3}){3}):)?(?:\d{1,5}:)?\d{1,5}(?:/(?:tcp|udp))?$"
VOLUME_PATTERN = r"^[^:]+:/[^:]*(?::(?:ro|rw))?$"
DURATION_PATTERN = r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$"
RESERVED_LABEL_PREFIX = "docklet."

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION = 7 * 24 * 3600.0


def parse_duration(value: float | str) -> float:
    """Seconds from a number or a string like '1m30s'."""
    if isinstance(value, int | float):
        if not 0 <= value <= MAX_DURATION:  # also refuses NaN and infinity
            raise ValueError(f"{value} is not a duration from 0 to {MAX_DURATION:g} seconds")
        return float(value)
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"{value!r} is not a duration (try '10s', '1m30s', '500ms')")
    seconds = sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value))
    return parse_duration(seconds)


def _check_duration(value: float | str) -> float | str:
    parse_duration(value)
    return value


Duration = Annotated[
    float | str,
    AfterValidator(_check_duration),
    Field(description="Seconds, or a duration such as '500ms', '10s', '1m30s'."),
]


def _scalar_text(value: Any) -> Any:
    """`PORT: 8000` and `DEBUG: true` mean what a shell would pass: "8000", "true"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


class RestartPolicy(StrEnum):
    NO = "no"
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    UNLESS_STOPPED = "unless-stopped"


class SpecState(StrEnum):
    """What a spec may ask for; `removed` (DesiredState) is deleting the file."""

    RUNNING = DesiredState.RUNNING.value
    STOPPED = DesiredState.STOPPED.value


class PullPolicy(StrEnum):
    ALWAYS = "always"  # pull before every deploy
    MISSING = "missing"  # pull only when the engine lacks the image
    NEVER = "never"  # the image must already be on the node


# The fields that shape a container: change one and the container is replaced.
CONTAINER_FIELDS = frozenset(
    {
        "image",
        "command",
        "env",
        "ports",
        "volumes",
        "labels",
        "restart",
        "stop_grace_period",
        "healthcheck",
    }
)


class Strict(BaseModel):
    """A part of the spec in which unknown keys are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)


class Healthcheck(Strict):
    test: list[str] | str = Field(
        description="Command run in the container: a list (exec form) or a shell string."
    )
    interval: Duration = "30s"
    timeout: Duration = "30s"
    retries: int = Field(3, ge=1)
    start_period: Duration = "0s"


class Rollout(Strict):
    canary: int = Field(1, ge=0, description="Replicas updated first, on one node.")
    max_parallel: int = Field(1, ge=1, description="Replicas replaced at a time after it.")
    min_healthy_time: Duration = "10s"
    healthy_deadline: Duration = "5m"
    progress_deadline: Duration = "10m"
    auto_revert: bool = True


class Placement(Strict):
    nodes: list[str] = Field(
        default_factory=list, description="Only these node ids may run the app (empty: any)."
    )


class AppSpec(Strict):
    """One application: what to run, how many, and how to roll it out."""

    name: str = Field(pattern=NAME_PATTERN, description="DNS-label style: a-z, 0-9 and '-'.")
    image: str = Field(pattern=IMAGE_PATTERN, max_length=255)
    replicas: int = Field(1, ge=0, le=1000)
    state: SpecState = Field(
        SpecState.RUNNING, description="running or stopped (to remove an app, delete its file)."
    )
    command: list[str] | str | None = None
    env: dict[str, Annotated[str, BeforeValidator(_scalar_text)]] = Field(default_factory=dict)
    ports: list[Annotated[str, Field(pattern=PORT_PATTERN)]] = Field(
        default_factory=list, description="'[IP:]HOST:CONTAINER[/udp]' or 'CONTAINER'."
    )
    volumes: list[Annotated[str, Field(pattern=VOLUME_PATTERN)]] = Field(
        default_factory=list, description="'VOLUME_OR_HOST_PATH:/CONTAINER_PATH[:ro]'."
    )
    labels: dict[str, str] = Field(default_factory=dict)
    restart: RestartPolicy = RestartPolicy.UNLESS_STOPPED
    stop_grace_period: Duration = Field(
        "10s", description="How long `stop` waits for the process to exit before SIGKILL."
    )
    pull: PullPolicy = PullPolicy.MISSING
    healthcheck: Healthcheck | None = None
    placement: Placement = Field(default_factory=Placement)
    rollout: Rollout = Field(default_factory=Rollout)

    @field_validator("env")
    @classmethod
    def _env_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key or "=" in key:
                raise ValueError(f"environment variable name {key!r} is empty or contains '='")
        return value

    @field_validator("labels")
    @classmethod
    def _user_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key.startswith(RESERVED_LABEL_PREFIX):
                raise ValueError(f"label {key!r}: the 'docklet.' prefix is reserved")
        return value

    @field_validator("ports")
    @classmethod
    def _port_numbers(cls, value: list[str]) -> list[str]:
        for port in value:
            parse_port(port)
        return value

    def revision_hash(self) -> str:
        """Hash of everything a revision pins: the whole spec but the desired state."""
        return _digest(self.model_dump(mode="json", exclude={"state"}))

    def container_hash(self) -> str:
        """Hash of what shapes a container; equal hashes mean a container can be kept."""
        return _digest(self.model_dump(mode="json", include=CONTAINER_FIELDS))

    def container_spec(self) -> dict[str, Any]:
        """What an agent needs to make the container: its fields and the pull policy."""
        return self.model_dump(mode="json", include=CONTAINER_FIELDS | {"pull"})

    def to_yaml(self) -> str:
        """The spec as a user would write it: defaults left out."""
        data = self.model_dump(mode="json", exclude_defaults=True)
        data = {"name": self.name, "image": self.image, **data}
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


class PortMapping(BaseModel):
    host_ip: str
    host_port: int | None  # None: Docker picks a free one
    container_port: int
    protocol: str


def parse_port(text: str) -> PortMapping:
    """'[IP:][HOST:]CONTAINER[/proto]' as Docker's -p reads it."""
    mapping, _, protocol = text.partition("/")
    parts = mapping.split(":")
    host_ip = parts.pop(0) if len(parts) == 3 else ""
    numbers = [int(p) for p in parts]
    if any(not 1 <= n <= 65535 for n in numbers):
        raise ValueError(f"port mapping {text!r}: ports are 1 to 65535")
    return PortMapping(
        host_ip=host_ip,
        host_port=numbers[0] if len(numbers) == 2 else None,
        container_port=numbers[-1],
        protocol=protocol or "tcp",
    )


def _digest(data: Any) -> str:
    raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def default_name(image: str) -> str:
    """The app name `docklet run IMAGE` picks: the image name without registry, path or tag."""
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    base = last.split(":", 1)[0].lower()
    return re.sub(r"[^a-z0-9-]+", "-", base)[:63].strip("-") or "app"


def with_default_tag(image: str) -> str:
    """`nginx` → `nginx:latest`, as Docker would read it; digests and tags are kept."""
    if "@" in image or ":" in image.rsplit("/", 1)[-1]:
        return image
    return f"{image}:latest"


def dump(data: dict[str, Any]) -> bytes:
    """A spec file's bytes from its data."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()


FORMATS = {
    "name": "use a-z, 0-9 and '-', starting and ending with a letter or digit, at most 63",
    "image": "expected an image reference such as nginx:1.25 or registry.example.com/team/app:v2",
    "ports": "expected [IP:]HOST:CONTAINER[/udp], e.g. 8080:80",
    "volumes": "expected VOLUME_OR_HOST_PATH:/path/in/container[:ro]",
    "state": "to remove an app, delete its file",
}


def describe(error: ValidationError) -> str:
    """One line per problem, each naming the field: what a person needs to fix it."""
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "spec"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling; see schemas/app.schema.json)"
        elif item["type"] == "enum" and str(item["loc"][0]) in FORMATS:
            message = f"{message}; {FORMATS[str(item['loc'][0])]}"
        elif item["type"] == "string_pattern_mismatch":
            hint = FORMATS.get(str(item["loc"][0]), "see schemas/app.schema.json")
            message = f"{item['input']!r} is not valid: {hint}"
        lines.append(f"{where}: {message}")
    return "; ".join(lines)


def validate(data: Any, source: str = "spec") -> AppSpec:
    """An AppSpec from parsed data, or InvalidSpec that says what is wrong and where."""
    if not isinstance(data, dict):
        raise InvalidSpec(f"{source}: an app spec is a mapping of keys to values")
    try:
        return AppSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidSpec(f"{source}: {describe(exc)}", source=source) from None


def load(text: str, source: str = "spec") -> AppSpec:
    """An AppSpec from YAML text; errors carry the file name and, for YAML, the line."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidSpec(f"{where}: not valid YAML: {problem}", source=source) from None
    spec = validate(data, source)
    return spec


def json_schema() -> dict[str, Any]:
    schema = AppSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://docklet.dev/schemas/app.schema.json"
    return schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "app.schema.json"


if __name__ == "__main__":
    # Regenerate the published schema: `python -m docklet.spec`.
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_PATH
    target.write_text(schema_text())
    print(f"wrote {target}")
