"""The base of every typed spec: strict models, the error that names a key path, and search ranges.

Everything here is plain pydantic: `deptune validate` reads specs without importing torch, Ray or MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt, model_validator


class StrictModel(BaseModel):
    """Unknown keys are errors, values are validated (defaults too), and a parsed spec is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


M = TypeVar("M", bound=BaseModel)


def absolute_paths(model: M, base: Path) -> M:
    """`model` with every relative path made absolute against `base`: a run's workers and trial actors
    run in other folders, maybe on other nodes. Sub-models are copied, never re-validated from a dump."""
    def fix(value: Any) -> Any:
        if isinstance(value, Path) and not value.is_absolute():
            return base / value
        if isinstance(value, BaseModel):
            return absolute_paths(value, base)
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    update = {name: fixed for name in type(model).model_fields
              if (fixed := fix(getattr(model, name))) is not getattr(model, name)}
    return model.model_copy(update=update) if update else model


class SpecError(ValueError):
    """A spec that does not validate; `errors` holds one 'key.path: message' line per problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source, self.errors = source, errors
        super().__init__(f"{source}: {len(errors)} error(s)\n" + "\n".join(f"  {e}" for e in errors))


class IntRange(StrictModel):
    """A searched integer (prompt length, rank)."""

    low: PositiveInt
    high: PositiveInt
    step: PositiveInt = 1
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.step != 1:
            raise ValueError("log-scaled integer ranges take step 1")
        return self


class FloatRange(StrictModel):
    """A searched float (a learning rate), log-scaled by default."""

    low: PositiveFloat
    high: PositiveFloat
    log: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> "FloatRange":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        return self


Range = IntRange | FloatRange
