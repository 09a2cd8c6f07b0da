"""Spec files: bytes read with their bounds and the text as written, and written back exactly."""

from __future__ import annotations

import pytest

from docklet.common.defaults import MAX_SPEC_BYTES
from docklet.common.errors import InvalidSpec
from docklet.cp.desired import spec, specfile

SOURCE = "apps/web.yaml"


def with_lines(*extra: str) -> str:
    return "\n".join(["name: web", "image: nginx:1.27", *extra]) + "\n"


def error_for(text: str) -> str:
    with pytest.raises(InvalidSpec) as caught:
        specfile.load(text, source=SOURCE)
    return caught.value.message


# -- spec files as bytes: size and encoding ----------------------------------------

MiB = 1024 * 1024


def bytes_error(content: bytes, source: str = SOURCE) -> str:
    with pytest.raises(InvalidSpec) as caught:
        specfile.load(content, source=source)
    return caught.value.message


def test_load_takes_the_file_bytes() -> None:
    app = specfile.load(with_lines("env:", "  GREETING: grüß dich").encode(), source=SOURCE)
    assert app.env == {"GREETING": "grüß dich"}


@pytest.mark.parametrize(("size", "shown"), [(3_355_443, "3.2 MiB"), (256 * 1024 + 1, "256.1 KiB")])
def test_file_over_the_size_limit_is_refused(size: int, shown: str) -> None:
    head = with_lines().encode() + b"# "
    content = head + b"x" * (size - len(head))
    message = bytes_error(content, source="apps/x.yaml")
    assert message == f"apps/x.yaml: {shown} is over the 256 KiB limit for a spec file"


def test_file_at_the_size_limit_is_read() -> None:
    head = with_lines().encode() + b"# "
    assert specfile.load(head + b"x" * (MAX_SPEC_BYTES - len(head))).name == "web"


def test_bytes_that_are_not_utf8_are_refused_with_their_position() -> None:
    content = with_lines("env:", "  CITY: caf\xe9").encode("latin-1")
    message = bytes_error(content)
    offset = content.index(b"\xe9")
    assert message.startswith(f"{SOURCE}:4: not UTF-8: byte 0xe9 at offset {offset} ")
    assert "(line 4, column 12)" in message


def test_a_lone_surrogate_in_text_is_not_utf8_either() -> None:
    assert "not UTF-8" in error_for(with_lines("env:", "  A: x\ud800"))


def test_control_character_in_the_file_names_its_line() -> None:
    message = error_for(with_lines("env:", "  A: x\x01"))
    assert message.startswith(f"{SOURCE}:4: not valid YAML: character U+0001 is not allowed")


# -- aliases and nesting: bounded before anything is built -------------------------


def test_aliases_expanding_past_the_limit_are_refused() -> None:
    big = "x" * 100_000  # a 100 KB file that would be a 2 MB spec
    text = with_lines("labels:", f"  big: &s {big}", "command: [" + ", ".join(["*s"] * 20) + "]")
    assert len(text) < MAX_SPEC_BYTES
    assert error_for(text) == f"{SOURCE}: expands to more than 1 MiB (YAML aliases?)"


def test_aliases_within_the_limit_are_fine() -> None:
    text = with_lines("labels:", f"  big: &s {'x' * 1000}", "command: [*s, *s, *s]")
    assert specfile.load(text).command == ["x" * 1000] * 3


def test_nested_alias_bomb_is_refused_without_expanding_it() -> None:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, 30):  # 9**30 strings once expanded
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    message = error_for(with_lines("rollout:", *("  " + line for line in lines)))
    assert message == f"{SOURCE}: expands to more than 1 MiB (YAML aliases?)"


def test_recursive_alias_is_refused() -> None:
    message = error_for(with_lines("command: &c [a, *c]"))
    assert message.startswith(f"{SOURCE}:3: an alias refers to a collection that contains it")


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    message = error_for(with_lines("command: " + "[" * 5000 + "]" * 5000))
    assert message.startswith(f"{SOURCE}:3: not valid YAML: nested more than 32 levels deep")


# -- string fields keep the text as written (no YAML 1.1 surprises) -----------------


@pytest.mark.parametrize(
    "written",
    [
        "1.10",
        "012",
        "1:30",
        "0x1F",
        "yes",
        "NO",
        "on",
        "true",
        "True",
        "1_000",
        ".inf",
        "2024-01-01",
        "+12",
        "0b101",
        "=",
    ],
)
def test_env_value_is_the_text_as_written(written: str) -> None:
    app = specfile.load(with_lines("env:", f"  V: {written}", "labels:", f"  v: {written}"))
    assert app.env == {"V": written}
    assert app.labels == {"v": written}


def test_env_keys_that_yaml_reads_as_booleans_are_names() -> None:
    app = specfile.load(with_lines("env:", "  NO: x", "  on: y", "  1.10: z"))
    assert app.env == {"NO": "x", "on": "y", "1.10": "z"}


def test_string_fields_keep_their_text() -> None:
    text = "\n".join(
        [
            "name: 012",
            "image: nginx",
            "restart: no",
            "ports: [3000:22, 80]",
            "command: [sleep, 1.10, yes]",
            "placement: {nodes: [010, on]}",
            "healthcheck: {test: [CMD, check, 0x1F]}",
        ]
    )
    app = specfile.load(text)
    assert (app.name, app.restart) == ("012", "no")
    assert app.ports == ["3000:22", "80"]
    assert app.command == ["sleep", "1.10", "yes"]
    assert app.placement.nodes == ["010", "on"]
    assert app.healthcheck is not None and app.healthcheck.test == ["CMD", "check", "0x1F"]


def test_merge_keys_keep_the_text_too() -> None:
    app = specfile.load(with_lines("labels: &l {a: 012}", "env:", "  <<: *l", "  B: 1.10"))
    assert app.env == {"a": "012", "B": "1.10"}


def test_null_stays_null_where_a_field_allows_it() -> None:
    assert specfile.load(with_lines("command: ~", "healthcheck: null")).command is None
    assert "env.A: Input should be a valid string" in error_for(with_lines("env: {A: ~}"))


def test_numbers_outside_string_fields_are_still_numbers() -> None:
    app = specfile.load(with_lines("replicas: 012", "stop_grace_period: 30"))
    assert (app.replicas, app.stop_grace_period) == (10, 30)


def test_parse_gives_the_data_as_load_reads_it() -> None:
    data = specfile.parse(with_lines("env: {V: 1.10}", "replicas: 2").encode())
    assert data == {"name": "web", "image": "nginx:1.27", "env": {"V": "1.10"}, "replicas": 2}


# -- dump: what Docklet writes reads back exactly -----------------------------------

TRICKY = [
    "", " ", " lead", "trail ", "a  b", "a\x85b", "\x85", "\u2028", "x\u2029y", "x\ny", "x\n",
    "\n", "\n\n x", "\r\n", "\r", "\t", "tab\tin", "\x00", "\x01", "\x1b[0m", "\x7f", "\x9f",
    "\ufeff", "a\ufeff", "\u00a0", "\u200b", "\ue000", "\ufffe", "null", "~", "Null", "yes",
    "NO", "on", "true", "1.10", "012", "0x1F", "1:30", "1e3", ".inf", ".nan", "2024-01-01",
    "-", "- x", "? x", ": x", "a: b", "a:b", "#c", "a #c", "'", '"', "''", "&a", "*a", "!tag",
    "%x", "@x", "`x", "[x]", "{x}", ",", "<<", "=", "---", "...", "|", ">", "a\\b", "é",
    "日本", "😀", "\U0010ffff", "\ud800", "x" * 200 + " " + "y" * 200, "a " * 100,
]  # fmt: skip


def round_trip_data(value: str) -> dict[str, object]:
    return {
        "name": "web",
        "image": "nginx",
        "env": {value or "K": value, "K2": value},
        "labels": {"k": value},
        "command": [value, value],
        "x-other": {"v": value},
    }


@pytest.mark.parametrize("value", TRICKY)
def test_dump_reads_back_exactly(value: str) -> None:
    data = round_trip_data(value)
    assert specfile.parse(specfile.dump(data)) == data


def test_dump_reads_back_exactly_for_random_strings() -> None:
    import random

    alphabet = " \t\n\r\x00\x85\u2028\u2029\ufeff\xa0'\"#:-?&*!|>%@`,[]{}\\=~ab01.eé😀"
    rng = random.Random(7)
    for _ in range(500):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        data = round_trip_data(value)
        assert specfile.parse(specfile.dump(data)) == data, repr(value)


def test_dumped_spec_loads_as_the_same_spec() -> None:
    env = {f"V{i}": value for i, value in enumerate(TRICKY) if "\x00" not in value}
    env = {k: v for k, v in env.items() if "\ud800" not in v}
    app = spec.validate({"name": "web", "image": "nginx", "env": env, "command": "a\x85b"})
    assert specfile.load(specfile.dump(app.model_dump(mode="json"))) == app
    assert specfile.load(specfile.to_yaml(app)) == app
    assert specfile.load(specfile.to_yaml(app)).env["V5"] == "a\x85b"
