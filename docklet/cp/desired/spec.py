"""The app spec: one `apps/<name>.yaml` file in the desired-state repository.

`AppSpec` is the single source of the format: validation, defaults and the
published JSON Schema (`schemas/app.schema.json`, written by
`python -m docklet.cp.desired.spec`) all come from it.

Reading a file: `load(bytes, source)` → AppSpec, or `parse(bytes, source)` → its data for an
edit; writing one: `dump(data)` → bytes that read back exactly. Both refuse, with the file and
line, what would cost minutes or gigabytes (size, alias expansion, nesting) or what only Docker
would refuse later.
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
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from docklet.common.defaults import MAX_SPEC_BYTES, MAX_SPEC_EXPANDED
from docklet.common.errors import InvalidSpec
from docklet.common.status import DesiredState
from docklet.common.units import (
    PORT_FORMAT,
    PORT_PATTERN,
    parse_duration,
    parse_port,
    short,
    size_text,
)

# Bounds of one spec beyond the file sizes in defaults: each keeps a pushed file from asking
# Docker for what it refuses at deploy time, or the control plane for minutes of work.
MAX_DEPTH = 32  # nesting of YAML collections (a spec needs 3); PyYAML's composer recurses
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

    YAML files keep the text as written (see `_SHAPE`); this is for data that arrives
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
    env: dict[EnvName, EnvValue] = Field(default_factory=dict, max_length=MAX_ENV)
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
    placement: Placement = Field(default_factory=Placement)
    rollout: Rollout = Field(default_factory=Rollout)

    @field_validator("labels")
    @classmethod
    def _user_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key.startswith(RESERVED_LABEL_PREFIX):
                raise ValueError(f"label {key!r}: the 'docklet.' prefix is reserved")
        return value

    def revision_hash(self) -> str:
        """Hash of everything a revision pins: the whole spec but the desired state."""
        return _digest(self.model_dump(mode="json", exclude={"state"}))

    def container_hash(self) -> str:
        """Hash of what shapes a container; equal hashes mean a container can be kept."""
        return _digest(self.model_dump(mode="json", include=CONTAINER_FIELDS))

    def runtime_hash(self) -> str:
        """Hash of what decides whether the container works: its fields but labels.

        A revision whose runtime hash failed before is not rolled out again by
        itself (a later commit that only changes a label keeps it held).
        """
        return _digest(self.model_dump(mode="json", include=CONTAINER_FIELDS - {"labels"}))

    def container_spec(self) -> dict[str, Any]:
        """What an agent needs to make the container: its fields and the pull policy."""
        return self.model_dump(mode="json", include=CONTAINER_FIELDS | {"pull"})

    def to_yaml(self) -> str:
        """The spec as a user would write it: defaults left out; `load` reads it back exactly."""
        data = self.model_dump(mode="json", exclude_defaults=True)
        data = {"name": self.name, "image": self.image, **data}
        return dump(data).decode()


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


def _where(loc: tuple[int | str, ...]) -> str:
    """'env.KEY', 'command.0': a field path as a user reads it."""
    parts = []
    for i, part in enumerate(loc):
        if part == "[key]" or (part in _UNION_TAGS and i and loc[i - 1] in ("command", "test")):
            continue  # pydantic's marker of a key, or of a union member: no place in the file
        simple = isinstance(part, int) or (
            part.isprintable() and part.strip() == part != "" and len(part) <= 64
        )
        parts.append(str(part) if simple else short(part))
    return ".".join(parts) or "spec"


def _problems(error: ValidationError) -> list[tuple[tuple[int | str, ...], str]]:
    """(pydantic location, 'field: message') for each problem: what a person needs to fix it."""
    problems = []
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
        problems.append((item["loc"], f"{_where(item['loc'])}: {message}"))
    return problems


def describe(error: ValidationError) -> str:
    """One line per problem, each naming the field: what a person needs to fix it."""
    return "; ".join(text for _, text in _problems(error))


def validate(data: Any, source: str = "spec") -> AppSpec:
    """An AppSpec from parsed data, or InvalidSpec that says what is wrong and where."""
    return _validate(data, source, None)


def _validate(data: Any, source: str, root: Node | None) -> AppSpec:
    """validate(), with each problem's line when the data came from the YAML node `root`."""
    if not isinstance(data, dict):
        raise InvalidSpec(f"{source}: an app spec is a mapping of keys to values", source=source)
    try:
        return AppSpec.model_validate(data)
    except ValidationError as exc:
        if root is None:
            raise InvalidSpec(f"{source}: {describe(exc)}", source=source) from None
        lines = [f"{source}:{_line(root, loc)}: {text}" for loc, text in _problems(exc)]
        raise InvalidSpec("; ".join(lines), source=source) from None


def load(content: bytes | str, source: str = "spec") -> AppSpec:
    """An AppSpec from a spec file's bytes (or text); errors carry the file name and line."""
    data, root = _parse(content, source)
    return _validate(data, source, root)


def parse(content: bytes | str, source: str = "spec") -> Any:
    """A spec file's data, unvalidated, read as `load` reads it (bounds, text as written).

    For editing a file: change the data, validate() it, and write it with dump().
    """
    return _parse(content, source)[0]


def dump(data: dict[str, Any]) -> bytes:
    """YAML that parse() and load() read back as exactly `data`, every string included."""
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=_NO_FOLDING)
    return text.encode()


# -- reading YAML ------------------------------------------------------------------

# Tags of plain scalars YAML 1.1 turns into numbers, booleans, dates: in a string field the
# text as written is meant (`1.10` is not 1.1, `NO` not False, `3000:22` not 180022).
_TEXT_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}"
    for name in ("str", "int", "float", "bool", "timestamp", "value", "merge")
)
_TEXT = "text"  # a string field, or a list of them: scalars keep their text
# Where the spec has string fields. Keys of a mapping shape are always text; "*" is any key.
_SHAPE: dict[str, Any] = {
    "name": _TEXT,
    "image": _TEXT,
    "state": _TEXT,
    "restart": _TEXT,  # `restart: no` is the policy "no", not False
    "pull": _TEXT,
    "command": _TEXT,
    "env": {"*": _TEXT},
    "ports": _TEXT,
    "volumes": _TEXT,
    "labels": {"*": _TEXT},
    "healthcheck": {"test": _TEXT},
    "placement": {"nodes": _TEXT},
    "rollout": {},
}


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting before its recursive composer exhausts the stack."""

    depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_DEPTH} levels deep", mark
            )
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _parse(content: bytes | str, source: str) -> tuple[Any, Node | None]:
    raw = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
    if len(raw) > MAX_SPEC_BYTES:
        size, limit = size_text(len(raw)), size_text(MAX_SPEC_BYTES)
        raise InvalidSpec(f"{source}: {size} is over the {limit} limit for a spec file")
    text = _decode(raw, source)
    try:
        loader = _Loader(text)  # its reader refuses control characters at once
        try:
            root = loader.get_single_node()
            if root is None:
                return None, None
            _check_expansion(root, source)
            return _build(loader, root, _SHAPE), root
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, text, source) from None


def _decode(raw: bytes, source: str) -> str:
    """UTF-8 or an error that points at the bad byte; never U+FFFD deployed in its place."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InvalidSpec(
            f"{source}:{line}: not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}"
            f" (line {line}, column {column}); save the file as UTF-8",
            source=source,
        ) from None


def _yaml_error(exc: yaml.YAMLError, text: str, source: str) -> InvalidSpec:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    line = mark.line + 1 if mark else None
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        problem = (
            f"character U+{exc.character:04X} is not allowed;"
            ' write it as an escape in a double-quoted string ("\\x01")'
        )
    where = f"{source}:{line}" if line else source
    return InvalidSpec(f"{where}: not valid YAML: {problem}", source=source)


def _check_expansion(root: Node, source: str) -> None:
    """Refuse a spec whose aliases expand it past MAX_SPEC_EXPANDED bytes.

    Sizes are memoized per node, so a nested "billion laughs" costs one visit per node,
    and counting stops as soon as the budget is passed.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    budget = MAX_SPEC_EXPANDED

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise InvalidSpec(
                f"{source}:{node.start_mark.line + 1}: an alias refers to a collection"
                " that contains it; an app spec cannot be recursive",
                source=source,
            )
        if isinstance(node, ScalarNode):
            total = len(node.value.encode("utf-8", "surrogatepass")) + 1
        else:
            open_nodes.add(key)
            total = 1
            children = node.value if isinstance(node, SequenceNode) else _pairs(node)
            for child in children:
                total += size(child)
                if total > budget:
                    break  # the caller only needs to know it is over
            open_nodes.discard(key)
        sizes[key] = total
        return total

    if size(root) > budget:
        limit = size_text(MAX_SPEC_EXPANDED)
        raise InvalidSpec(f"{source}: expands to more than {limit} (YAML aliases?)")


def _pairs(node: Node) -> list[Node]:
    return [part for pair in node.value for part in pair]


def _build(loader: _Loader, node: Node, shape: Any) -> Any:
    """The data of `node`, with the text as written for the string fields `shape` names."""
    if shape == _TEXT and isinstance(node, ScalarNode) and node.tag in _TEXT_TAGS:
        return node.value
    if shape == _TEXT and isinstance(node, SequenceNode):
        return [_build(loader, item, _TEXT) for item in node.value]
    if isinstance(shape, dict) and isinstance(node, MappingNode):
        loader.flatten_mapping(node)  # resolve `<<: *base` merges as the loader would
        data = {}
        for key_node, value_node in node.value:
            key = _build(loader, key_node, _TEXT)
            if not isinstance(key, str | int | float | bool | None):
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a scalar", key_node.start_mark
                )
            inner = shape.get(key, shape.get("*")) if isinstance(key, str) else None
            data[key] = _build(loader, value_node, inner)
        return data
    return loader.construct_object(node, deep=True)


def _line(root: Node, loc: tuple[int | str, ...]) -> int:
    """The line of the file where the value at pydantic location `loc` is written."""
    node, marked = root, root
    for part in loc:
        if part == "[key]":
            break  # `marked` is already the key's node
        child = _child(node, part)
        if child is None:
            continue  # a union member's tag, or a key that is missing: keep the parent
        node, marked = child
    return marked.start_mark.line + 1


def _child(node: Node, part: int | str) -> tuple[Node, Node] | None:
    """(node of `part` in `node`, node whose line names it: the key in a mapping)."""
    if isinstance(node, MappingNode):
        for key_node, value_node in reversed(node.value):  # the last of duplicate keys wins
            if isinstance(key_node, ScalarNode) and key_node.value == str(part):
                return value_node, key_node
    elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part], node.value[part]
    return None


# -- writing YAML ------------------------------------------------------------------

_NO_FOLDING = 1 << 30  # line width: a folded long line is one more way to change a string


class _Dumper(yaml.SafeDumper):
    """SafeDumper whose strings read back exactly."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Double quotes escape what YAML would otherwise read as a line break (U+0085, U+2028,
    # U+2029) or strip (control and format characters); the rest the emitter quotes itself.
    plain = all(" " <= c <= "~" or (c >= "\xa0" and c.isprintable()) for c in value)
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=None if plain else '"')


_Dumper.add_representer(str, _represent_str)


def json_schema() -> dict[str, Any]:
    schema = AppSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://docklet.dev/schemas/app.schema.json"
    return schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "app.schema.json"


if __name__ == "__main__":
    # Regenerate the published schema: `python -m docklet.cp.desired.spec`.
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_PATH
    target.write_text(schema_text())
    print(f"wrote {target}")
