"""The published JSON Schema and the example specs a reader copies from."""

from __future__ import annotations

from pathlib import Path

from docklet.cp.desired import schema, specfile

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "repo" / "apps"


def test_published_schema_is_up_to_date() -> None:
    path = ROOT / "schemas" / "app.schema.json"
    assert path.read_text() == schema.schema_text(), (
        "schemas/app.schema.json is out of date:"
        " run `python -m docklet.cp.desired.schema` and commit it"
    )


def test_example_specs_are_valid() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 2, f"expected example specs in {EXAMPLES}"
    for path in files:
        app = specfile.load(path.read_text(), source=str(path))
        assert app.name == path.stem, f"{path}: name {app.name!r} must match the file name"
