"""The agent protocol: what agents send, validated at the door.

Every body an agent sends is checked here before it reaches the database, so
a wrong type, a missing field or an absurd number is a 400 that says which
field, never a 500. Unknown fields are ignored: a newer agent may send more.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from docklet.errors import BadRequest

Id = Annotated[str, Field(min_length=1, max_length=256)]
Text = Annotated[str, Field(max_length=10_000)]
Count = Annotated[int, Field(ge=0, le=2**31)]
ExitCode = Annotated[int, Field(ge=-(2**31), le=2**31)]
NODE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,62}$"


class Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Registration(Wire):
    engine_id: Id
    name: Annotated[str, Field(pattern=NODE_NAME)]
    info: dict[str, Any] = Field(default_factory=dict)


class ObservedContainer(Wire):
    """One container as an agent saw it in Docker."""

    id: Id
    name: Id
    image: Text = ""
    state: Annotated[str, Field(min_length=1, max_length=32)]
    health: Annotated[str, Field(max_length=32)] | None = None
    exit_code: ExitCode | None = None
    restarts: Count = 0
    labels: dict[str, Annotated[str, Field(max_length=1000)]] = Field(default_factory=dict)

    @property
    def app(self) -> str | None:
        return self.labels.get("docklet.app")

    def label_number(self, key: str) -> int | None:
        """A numeric docklet label (slot, revision), or None when absent or not a number."""
        value = self.labels.get(key, "")
        return int(value) if value.isdigit() and len(value) < 10 else None


class Heartbeat(Wire):
    docker_ok: bool = True
    docker_error: Text | None = None
    containers: list[ObservedContainer] | None = None
    report_seq: Count = 0


class TaskReport(Wire):
    status: Literal["running", "done", "failed"]
    lease_token: Annotated[str, Field(max_length=200)] = ""
    seq: Count | None = None
    error: Text | None = None
    container_id: Id | None = None
    container: ObservedContainer | None = None


M = TypeVar("M", bound=Wire)


def parse(model: type[M], data: Any) -> M:
    """The body as `model`, or a 400 naming each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise BadRequest(f"invalid {model.__name__.lower()}: {problems}") from None
