"""The published JSON Schema of an app spec: `schemas/app.schema.json`, made from AppSpec.

Editors use it to complete and check `apps/<name>.yaml` as it is typed. Regenerate it with
`python -m docklet.cp.desired.schema`; a test fails when the committed file is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from docklet.cp.desired.spec import AppSpec

# The repository's schemas/ folder: this file is docklet/cp/desired/schema.py.
SCHEMA_PATH = Path(__file__).resolve().parents[3] / "schemas" / "app.schema.json"


def json_schema() -> dict[str, Any]:
    schema = AppSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://docklet.dev/schemas/app.schema.json"
    return schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> None:
    """Write the schema to `argv[0]`, or to the repository's schemas/app.schema.json."""
    target = Path(argv[0]) if argv else SCHEMA_PATH
    target.write_text(schema_text())
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1:])
