"""A spec file: the bytes of `apps/<name>.yaml`, read into an AppSpec and written back.

Reading: `load(bytes, source)` → AppSpec, or `parse(bytes, source)` → its data for an edit.
Writing: `dump(data)` → bytes that read back exactly; `to_yaml(app)` → the spec as a user would
write it. Reading refuses, with the file and line, what would cost minutes or gigabytes (size,
alias expansion, nesting); the model (`spec`) refuses what only Docker would refuse later, and
this module tells it which line each problem is on.
"""

from __future__ import annotations

import functools
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from docklet.common.defaults import MAX_SPEC_BYTES, MAX_SPEC_EXPANDED
from docklet.common.errors import InvalidSpec
from docklet.common.units import size_text
from docklet.cp.desired.spec import AppSpec, Loc, validate

MAX_DEPTH = 32  # nesting of YAML collections (a spec needs 3); PyYAML's composer recurses


def load(content: bytes | str, source: str = "spec") -> AppSpec:
    """An AppSpec from a spec file's bytes (or text); errors carry the file name and line."""
    data, root = _parse(content, source)
    line_of = None if root is None else functools.partial(_line, root)
    return validate(data, source, line_of=line_of)


def line_of(content: bytes | str, loc: Loc) -> int | None:
    """The line of the file where the value at `loc` is written (None: an empty file).

    For problems found after a file was loaded (a secret it names that does not exist)."""
    root = _parse(content, "spec")[1]
    return None if root is None else _line(root, loc)


def parse(content: bytes | str, source: str = "spec") -> Any:
    """A spec file's data, unvalidated, read as `load` reads it (bounds, text as written).

    For editing a file: change the data, `spec.validate()` it, and write it with dump().
    """
    return _parse(content, source)[0]


def dump(data: dict[str, Any]) -> bytes:
    """YAML that parse() and load() read back as exactly `data`, every string included."""
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=_NO_FOLDING)
    return text.encode()


def to_yaml(app: AppSpec) -> str:
    """The spec as a user would write it: defaults left out; `load` reads it back exactly."""
    return dump(app.as_written()).decode()


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
    "secrets": _TEXT,  # [{name: …, target: …}]: a secret's name `1.10` is text
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
    if shape == _TEXT and isinstance(node, MappingNode):
        shape = {"*": _TEXT}  # {secret: NAME} in env, an item of secrets: text as written
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


def _line(root: Node, loc: Loc) -> int:
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
