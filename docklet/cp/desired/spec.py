"""The app spec: what one `apps/<name>.yaml` file in the desired-state repository asks for.

`AppSpec` is the single source of the format: validation, defaults, the hashes a revision is
known by, and the error wording all live here. Reading and writing the file (YAML, its bounds,
which line a problem is on) is `specfile`; the published JSON Schema is `schema`. Both build
on this module, which knows nothing of either.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)

from docklet.common import defaults
from docklet.common.errors import InvalidSpec
from docklet.common.status import DesiredState
from docklet.common.units import (
    PORT_FORMAT,
    PORT_PATTERN,
    parse_duration,
    parse_port,
    short,
)

# Bounds of one spec beyond the file sizes in defaults: each keeps a pushed file from asking
# Docker for what it refuses at deploy time, or the control plane for minutes of work.
MAX_ENV = 1000  # environment variables
MAX_LABELS = 256
MAX_PORTS = 100
MAX_VOLUMES = 100
MAX_ARGS = 1000  # items of command or healthcheck.test
MAX_NODES = 100  # placement.nodes
MAX_KEY = 1024  # characters of an env or label key
MAX_VALUE = 64 * 1024  # characters of an env or label value, an argument, a shell command
MAX_VOLUME = 4096  # characters of a volume mapping: PATH_MAX
MAX_NODE_ID = 253  # a node id is a hostname at most
MAX_COUNT = 1000  # replicas, canary, max_parallel, healthcheck retries
MAX_SECRET_FILES = 100
MAX_VERSION = 2**31  # a secret's version number

NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
# Every pattern spells its classes out ([0-9], [A-Za-z0-9_]): `\d` and `\w` match any Unicode
# digit or letter, in `re` and in pydantic's Rust regex alike, and Docker refuses those.
# Docker's reference grammar, simplified: [registry[:port]/]path[:tag][@digest].
IMAGE_PATTERN = (
    r"^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
# An absolute path in the container, without '..' (the file lands where it says) or controls.
SECRET_TARGET_PATTERN = r"^/[^\x00-\x1f\x7f]*[^/\x00-\x1f\x7f]$"
SECRETS_DIR = "/run/secrets"  # where a secret file goes when its target is not given
# No ':' inside either path (Docker splits on it), nor control characters (NUL ends a C string).
VOLUME_PATTERN = r"^[^:\x00-\x1f\x7f]+:/[^:\x00-\x1f\x7f]*(?::(?:ro|rw))?$"
RESERVED_LABEL_PREFIX = "docklet."


def _check_duration(value: float | str) -> float | str:
    parse_duration(value)
    return value


Duration = Annotated[
    float | str,
    AfterValidator(_check_duration),
    Field(description="Seconds, or a duration such as '500ms', '10s', '1m30s'."),
]


def _scalar_text(value: Any) -> Any:
    """`PORT: 8000` and `DEBUG: true` mean what a shell would pass: "8000", "true".

    YAML files keep the text as written (see `specfile`); this is for data that arrives
    already parsed, as JSON from the API.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _text(value: str) -> str:
    """A string Docker can take: NUL ends a C string (pydantic refuses lone surrogates)."""
    if "\x00" in value:
        raise ValueError(f"{short(value)} contains a NUL character (\\0)")
    return value


def _env_name(value: str) -> str:
    if "=" in value:
        raise ValueError(f"environment variable name {short(value)} contains '='")
    return _text(value)


def _check_port(value: str) -> str:
    parse_port(value)
    return value


def _form(value: Any) -> str:
    return "exec" if isinstance(value, list) else "shell"


Arg = Annotated[str, Field(max_length=MAX_VALUE), AfterValidator(_text)]
# A list (exec form) or a shell string; the tags keep error paths short (command.0).
Command = Annotated[
    Annotated[list[Arg], Field(max_length=MAX_ARGS), Tag("exec")] | Annotated[Arg, Tag("shell")],
    Discriminator(_form),
]
EnvName = Annotated[str, Field(min_length=1, max_length=MAX_KEY), AfterValidator(_env_name)]
# The length constraint first, so it applies to the string and not to whatever came in.
EnvValue = Annotated[
    str, Field(max_length=MAX_VALUE), BeforeValidator(_scalar_text), AfterValidator(_text)
]
LabelKey = Annotated[str, Field(min_length=1, max_length=MAX_KEY), AfterValidator(_text)]
LabelValue = Annotated[str, Field(max_length=MAX_VALUE), AfterValidator(_text)]
Port = Annotated[str, Field(pattern=PORT_PATTERN, max_length=64), AfterValidator(_check_port)]
Volume = Annotated[str, Field(pattern=VOLUME_PATTERN, max_length=MAX_VOLUME)]
NodeId = Annotated[str, Field(min_length=1, max_length=MAX_NODE_ID), AfterValidator(_text)]
_UNION_TAGS = {"exec", "shell"}  # loc parts that name a Command form, not a place in the spec
_ENV_TAGS = {"text", "secret-ref"}  # the same for an env value: text, or {secret: NAME}


def _env_form(value: Any) -> str:
    return "secret-ref" if isinstance(value, dict | SecretRef) else "text"


SecretName = Annotated[
    str,
    Field(
        pattern=defaults.SECRET_NAME_PATTERN,
        description="A secret's name (docklet secret list): a-z, 0-9, '.', '_', '-'.",
    ),
]
SecretVersion = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_VERSION,
        description="A version of the secret; absent: the newest (the revision records which)."
        " `docklet rollback` writes the version it returns to.",
    ),
]


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
        "secrets",
    }
)


class Strict(BaseModel):
    """A part of the spec in which unknown keys are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)


class SecretRef(Strict):
    """An env value kept as a secret (`docklet secret set NAME`): Git holds only its name."""

    secret: SecretName
    version: SecretVersion | None = None


class SecretFile(Strict):
    """A secret as a file in the container (mode 0400, owned by root)."""

    name: SecretName
    target: Annotated[str, Field(pattern=SECRET_TARGET_PATTERN, max_length=MAX_VOLUME)] | None = (
        Field(None, description=f"Absolute path of the file; default {SECRETS_DIR}/NAME.")
    )
    version: SecretVersion | None = None

    @field_validator("target")
    @classmethod
    def _inside(cls, value: str | None) -> str | None:
        if value is not None and ".." in value.split("/"):
            raise ValueError(f"{short(value)}: a target path may not contain '..'")
        return value

    @property
    def path(self) -> str:
        return self.target or f"{SECRETS_DIR}/{self.name}"


# Tagged, so a bad value's error names the one form it was meant as (env.KEY.secret).
EnvEntry = Annotated[
    Annotated[EnvValue, Tag("text")] | Annotated[SecretRef, Tag("secret-ref")],
    Discriminator(_env_form),
]


class Healthcheck(Strict):
    test: Command = Field(
        description="Command run in the container: a list (exec form) or a shell string."
    )
    interval: Duration = "30s"
    timeout: Duration = "30s"
    retries: int = Field(3, ge=1, le=MAX_COUNT)
    start_period: Duration = "0s"


class RolloutOrder(StrEnum):
    AUTO = "auto"  # start-first, unless a published host port forbids two at once
    START_FIRST = "start-first"  # the new container starts before the old one stops
    STOP_FIRST = "stop-first"  # pulled and created first, then the old stops, then it starts


class Rollout(Strict):
    """How a new revision replaces the running one (defaults close to Nomad's and Swarm's)."""

    canary: int = Field(
        1, ge=0, le=1, description="1: one replica is updated first, on one node, and verified."
    )
    max_parallel: int = Field(
        1, ge=1, le=MAX_COUNT, description="Replicas replaced at a time after the canary."
    )
    min_healthy_time: Duration = Field(
        "5s", description="How long a new container must run (and pass its health check)."
    )
    healthy_deadline: Duration = Field(
        "5m", description="How long one step may take to become healthy before it fails."
    )
    progress_deadline: Duration = Field(
        "10m", description="How long the whole rollout may take (lost nodes are retried within)."
    )
    auto_revert: bool = Field(True, description="Roll back to the last stable revision on failure.")
    order: RolloutOrder = RolloutOrder.AUTO


class Placement(Strict):
    nodes: list[NodeId] = Field(
        default_factory=list,
        max_length=MAX_NODES,
        description="Only these node ids may run the app (empty: any).",
    )


class AppSpec(Strict):
    """One application: what to run, how many, and how to roll it out."""

    name: str = Field(pattern=NAME_PATTERN, description="DNS-label style: a-z, 0-9 and '-'.")
    image: str = Field(pattern=IMAGE_PATTERN, max_length=255)
    replicas: int = Field(1, ge=0, le=MAX_COUNT)
    state: SpecState = Field(
        SpecState.RUNNING, description="running or stopped (to remove an app, delete its file)."
    )
    command: Command | None = None
    env: dict[EnvName, EnvEntry] = Field(
        default_factory=dict,
        max_length=MAX_ENV,
        description="Values as text, or {secret: NAME} for a value kept as a secret.",
    )
    ports: list[Port] = Field(
        default_factory=list,
        max_length=MAX_PORTS,
        description="'[IP:]HOST:CONTAINER[/udp]' or 'CONTAINER'; IP is IPv4 or [IPv6].",
    )
    volumes: list[Volume] = Field(
        default_factory=list,
        max_length=MAX_VOLUMES,
        description="'VOLUME_OR_HOST_PATH:/CONTAINER_PATH[:ro]'.",
    )
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=MAX_LABELS)
    restart: RestartPolicy = RestartPolicy.UNLESS_STOPPED
    stop_grace_period: Duration = Field(
        "10s", description="How long `stop` waits for the process to exit before SIGKILL."
    )
    pull: PullPolicy = PullPolicy.MISSING
    healthcheck: Healthcheck | None = None
    secrets: list[SecretFile] = Field(
        default_factory=list,
        max_length=MAX_SECRET_FILES,
        description="Secrets written as files into the container before it starts.",
    )
    placement: Placement = Field(default_factory=Placement)
    rollout: Rollout = Field(default_factory=Rollout)

    @field_validator("labels")
    @classmethod
    def _user_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key.startswith(RESERVED_LABEL_PREFIX):
                raise ValueError(f"label {key!r}: the 'docklet.' prefix is reserved")
        return value

    @field_validator("secrets")
    @classmethod
    def _one_file_a_path(cls, value: list[SecretFile]) -> list[SecretFile]:
        paths = [item.path for item in value]
        for path in paths:
            if paths.count(path) > 1:
                raise ValueError(f"two secrets are written to {short(path)}")
        return value

    def secret_refs(self) -> list[tuple[Loc, str, int | None]]:
        """(where, secret name, pinned version or None) of every secret the spec uses."""
        refs: list[tuple[Loc, str, int | None]] = [
            (("env", key), value.secret, value.version)
            for key, value in self.env.items()
            if isinstance(value, SecretRef)
        ]
        refs += [(("secrets", i), f.name, f.version) for i, f in enumerate(self.secrets)]
        return refs

    def pinned(self, versions: Mapping[str, int]) -> AppSpec:
        """This spec with each secret's version written in (`versions`: name → newest),
        as a revision records it: a new value of a secret is a new revision."""
        env = {
            key: value.model_copy(update={"version": versions[value.secret]})
            if isinstance(value, SecretRef) and value.version is None
            else value
            for key, value in self.env.items()
        }
        files = [
            f if f.version is not None else f.model_copy(update={"version": versions[f.name]})
            for f in self.secrets
        ]
        return self.model_copy(update={"env": env, "secrets": files})

    def _dump(self, **which: Any) -> dict[str, Any]:
        # No secret files: the hashes of the specs written before secrets existed.
        data = self.model_dump(mode="json", **which)
        if data.get("secrets") == []:
            del data["secrets"]
        return data

    def revision_hash(self) -> str:
        """Hash of everything a revision pins: the whole spec but the desired state."""
        return _digest(self._dump(exclude={"state"}))

    def container_hash(self) -> str:
        """Hash of what shapes a container; equal hashes mean a container can be kept."""
        return _digest(self._dump(include=CONTAINER_FIELDS))

    def runtime_hash(self) -> str:
        """Hash of what decides whether the container works: its fields but labels.

        A revision whose runtime hash failed before is not rolled out again by
        itself (a later commit that only changes a label keeps it held).
        """
        return _digest(self._dump(include=CONTAINER_FIELDS - {"labels"}))

    def container_spec(self) -> dict[str, Any]:
        """What an agent needs to make the container: its fields and the pull policy.

        Secrets appear as their names and versions; only a lease carries values."""
        data = self._dump(include=CONTAINER_FIELDS | {"pull"})
        if self.secrets:
            data["secrets"] = [
                {"name": f.name, "version": f.version, "target": f.path} for f in self.secrets
            ]
        return data

    def as_written(self) -> dict[str, Any]:
        """The spec as a user would write it: name and image first, defaults left out."""
        data = self.model_dump(mode="json", exclude_defaults=True)
        return {"name": self.name, "image": self.image, **data}


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


FORMATS = {
    "name": "use a-z, 0-9 and '-', starting and ending with a letter or digit, at most 63",
    "image": "expected an image reference such as nginx:1.25 or registry.example.com/team/app:v2",
    "ports": PORT_FORMAT,
    "volumes": "expected VOLUME_OR_HOST_PATH:/path/in/container[:ro]",
    "state": "to remove an app, delete its file",
}


Loc = tuple[int | str, ...]  # where pydantic says a problem is: ("env", "KEY"), ("command", 0)


def _where(loc: Loc) -> str:
    """'env.KEY', 'command.0': a field path as a user reads it."""
    parts = []
    for i, part in enumerate(loc):
        if part == "[key]" or (part in _UNION_TAGS and i and loc[i - 1] in ("command", "test")):
            continue
        if part in _ENV_TAGS and i > 1 and loc[i - 2] == "env":
            continue  # pydantic's marker of a key, or of a union member: no place in the file
        simple = isinstance(part, int) or (
            part.isprintable() and part.strip() == part != "" and len(part) <= 64
        )
        parts.append(str(part) if simple else short(part))
    return ".".join(parts) or "spec"


def problems(error: ValidationError) -> list[tuple[Loc, str]]:
    """(pydantic location, 'field: message') for each problem: what a person needs to fix it."""
    found = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling; see schemas/app.schema.json)"
        elif item["type"] == "enum" and field in FORMATS:
            message = f"{message}; {FORMATS[field]}"
        elif item["type"] == "string_pattern_mismatch":
            hint = FORMATS.get(field, "see schemas/app.schema.json")
            message = f"{short(item['input'])} is not valid: {hint}"
        found.append((item["loc"], f"{_where(item['loc'])}: {message}"))
    return found


def describe(error: ValidationError) -> str:
    """One line per problem, each naming the field: what a person needs to fix it."""
    return "; ".join(text for _, text in problems(error))


def validate(
    data: Any, source: str = "spec", line_of: Callable[[Loc], int] | None = None
) -> AppSpec:
    """An AppSpec from parsed data, or InvalidSpec that says what is wrong and where.

    `line_of` names the line of the file each problem is on, when the data was read from one
    (`specfile.load` passes it; this module knows nothing of YAML).
    """
    if not isinstance(data, dict):
        raise InvalidSpec(f"{source}: an app spec is a mapping of keys to values", source=source)
    try:
        return AppSpec.model_validate(data)
    except ValidationError as exc:
        if line_of is None:
            raise InvalidSpec(f"{source}: {describe(exc)}", source=source) from None
        lines = [f"{source}:{line_of(loc)}: {text}" for loc, text in problems(exc)]
        raise InvalidSpec("; ".join(lines), source=source) from None
