"""The base of every typed spec: strict models, the error that names a key path, and search ranges.

Everything here is plain pydantic: `deptune validate` reads specs without importing torch, Ray or MLflow.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt, ValidationInfo, field_validator, model_validator

MASK = "***"
"""What a secret becomes, as in SQLAlchemy's `URL.render_as_string(hide_password=True)`."""

_URL_PASSWORD = re.compile(r"(?<![^\s:/@'\"])(?P<head>[^\s:/@'\"]{1,128}):(?P<password>[^\s/'\"]{0,256})@")
"""`user:password@` wherever it stands: in a URL (`scheme://user:password@host`) and in a malformed one
(`postgresql:/user:password@host`, `user:password@host/db`) alike. Tried only where a word starts, and
bounded, so a long line costs linear time."""
_QUERY_SECRET = re.compile(
    r"(?i)(?P<head>[?&;](?:password|passwd|pwd|secret|token|api_?key|access_?key|"
    r"sslpassword)=)[^&;#\s'\"]+"
)
SECRET_ENV = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "RAY_AUTH_TOKEN",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "PGPASSWORD",
)
"""Environment variables whose values are secrets wherever they turn up."""


def redact(text: str) -> str:
    """`text` (a URL, a message, a whole spec file) with every secret masked: the password of any
    `user:password@host`, in a well-formed URL or not (`scheme://user:password@host`,
    `scheme:/user:password@host`, `user:password@host/db`), secret query values (`?password=`, `&token=`),
    and the values of `SECRET_ENV`. The one redaction of the platform: everything printed, logged, tagged
    or stored goes through it. Over-masking is the safe side: a password with a raw '@' masks up to its
    last '@', and any `word:word@` is taken for credentials."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['head']}{MASK}", text)
    for name in SECRET_ENV:
        if len(secret := os.environ.get(name, "")) >= 4:
            text = text.replace(secret, MASK)
    return text


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(`url` without its password, user, password): the password, when there is one, is for the
    environment (MLFLOW_TRACKING_PASSWORD, PGPASSWORD), never for data that is pickled or stored. An
    http(s) URL loses its user too (basic auth comes from the environment); a database URL keeps it."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, parts.username, None
    host = parts.netloc.rpartition("@")[2]
    user = parts.netloc.rpartition("@")[0].split(":", 1)[0]
    keep = f"{user}@" if user and parts.scheme not in ("http", "https") else ""
    return urlunsplit(parts._replace(netloc=keep + host)), unquote(user), unquote(parts.password)


def redact_logs() -> None:
    """Every log record this process makes is redacted when it is made (MLflow's, Ray's and ours alike),
    whichever handler prints it."""
    make = logging.getLogRecordFactory()
    if getattr(make, "redacts", False):
        return

    def redacted(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 -- a malformed record is logging's to report, as it was
            return record
        if (masked := redact(message)) != message:
            record.msg, record.args = masked, None
        return record

    redacted.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacted)


SEED_SPACE = 2**32
"""Seeds every generator takes (Python's, numpy's, torch's, Optuna's samplers'): 0 <= seed < 2**32."""


def derive_seed(*parts: int) -> int:
    """A seed in [0, 2**32) from any integers (a seed of any size or sign, an execution number): the first
    four bytes of the sha256 of their decimal forms, so different parts give unrelated seeds."""
    return int.from_bytes(hashlib.sha256(" ".join(map(str, parts)).encode()).digest()[:4], "big")


def rng_seed(seed: int) -> int:
    """What seeds the generators for a user's `seed`: the seed itself where every generator takes it (runs
    seeded so keep their numbers), else one derived from it, so that any integer a spec holds works."""
    return seed if 0 <= seed < SEED_SPACE else derive_seed(seed)


def database_url_problem(url: str) -> str | None:
    """Why `url` is not a SQLAlchemy database URL this machine can open, from its form alone (no
    connection: reachability is the run's to check); None when it is one. Never echoes the URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return "not a database URL (write dialect[+driver]://user@host/database, or sqlite:///path)"
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        return (
            f"unknown database {parsed.drivername!r}; use sqlite:///path or postgresql://user@host/database "
            f"(or another SQLAlchemy dialect whose driver is installed)"
        )
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        return f"{parsed.drivername}: its driver ({exc.name or exc}) is not installed; install it or use another"
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        return "an in-memory sqlite database vanishes with its process; give a file: sqlite:///path"
    return None


def private_dir(path: Path) -> Path:
    """`path` created if missing (parents too) and made 0700: folders where secrets or the runs' records
    land are this user's only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def _kinds(annotation: Any) -> set[type]:
    """The plain types a field's annotation accepts (through Optional, unions, Annotated and Literal)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_kinds(a) for a in typing.get_args(annotation)))
    if origin is typing.Literal:
        return {type(v) for v in typing.get_args(annotation)}
    return {annotation} if isinstance(annotation, type) else {object}


class StrictModel(BaseModel):
    """Unknown keys are errors, values are validated (defaults too), and a parsed spec is frozen. Numbers
    are finite, an integer is never a boolean or a string (`trials: true` is not 1), a boolean is
    `true` or `false` only."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_ints_and_bools(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        declared = _kinds(field.annotation) if field is not None else {object}
        kinds = declared - {type(None)}
        if value is None and type(None) in declared:
            return value
        if kinds == {bool} and not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        if isinstance(value, bool) and bool not in kinds and kinds & {int, float}:
            raise ValueError(f"expected a number, got {str(value).lower()}")
        if kinds == {int} and isinstance(value, str):
            raise ValueError(f"expected an integer, got {value!r}")
        return value


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

    update = {
        name: fixed
        for name in type(model).model_fields
        if (fixed := fix(getattr(model, name))) is not getattr(model, name)
    }
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
    def _ordered(self) -> IntRange:
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
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        return self


Range = IntRange | FloatRange
