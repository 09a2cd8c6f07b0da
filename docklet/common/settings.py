"""Settings as data: the machinery both processes' settings tables share.

Each setting is a pydantic field with its default (from `defaults`), its
range and its help text; the same table makes the process's `--options`,
their `DOCKLET_<NAME>` environment variables and `--help`, and checks the
values (NaN and infinity are refused by every float field).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import BaseModel, ConfigDict, ValidationError


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


S = TypeVar("S", bound=Settings)


def settings(model: type[Settings]) -> list[tuple[str, Any, Any, str]]:
    """(name, type, default, help) for every setting: what the CLI options are made from."""
    rows = []
    for name, info in model.model_fields.items():
        default = info.get_default(call_default_factory=True)
        kind: Any = info.annotation
        if kind not in (int, float, str, Path, bool):  # `float | None`, `str | None`
            kind = float if "float" in str(kind) else str
        rows.append((name, kind, default, info.description or ""))
    return rows


def options(model: type[Settings]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """One --option per setting of `model`, each also read from DOCKLET_<NAME>."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for name, kind, default, help_text in reversed(settings(model)):
            func = click.option(
                f"--{name.replace('_', '-')}",
                name,
                type=click.Path(path_type=Path) if kind is Path else kind,
                default=default,
                show_default=default is not None,
                envvar=f"DOCKLET_{name.upper()}",
                show_envvar=True,
                help=help_text,
            )(func)
        return func

    return decorate


def build(model: type[S], values: dict[str, Any]) -> S:
    """The settings from option values, or a usage error naming each bad option."""
    try:
        return model(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{str(e['loc'][0]).replace('_', '-')}: {_words(e['msg'])}"
            if e["loc"]
            else _words(e["msg"])
            for e in exc.errors()
        )
        raise click.UsageError(problems) from None


def _words(message: str) -> str:
    """pydantic's message without its 'Value error, ' prefix: a validator's own words."""
    return message.removeprefix("Value error, ")
