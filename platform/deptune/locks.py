"""Named locks that die with their holder: two executions of one scheduled sweep, or two promotions of
one registered model, never run at once, and a crashed holder never leaves a lock behind.

The lock lives where the team's shared state lives: a PostgreSQL session-level advisory lock on the
study database (released by the server when the holder's connection drops, a crash included), or an
`flock` on a file next to a sqlite database (released by the kernel when the holder's process dies).
"""

from __future__ import annotations

import fcntl
import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockHeld(RuntimeError):
    """Someone else holds the lock (and still did when the wait ran out)."""


def _key_id(key: str) -> int:
    """A stable signed 64-bit id for PostgreSQL's advisory-lock space."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


@contextmanager
def exclusive(key: str, url: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold lock `key` in the database at `url` (SQLAlchemy URL) for the block; raise `LockHeld` if another
    holder keeps it for longer than `wait_s` seconds (0: fail at once)."""
    if url.startswith(("postgresql", "postgres")):
        with _advisory(key, url, wait_s):
            yield
    elif url.startswith("sqlite:///"):
        with _file_lock(Path(url.removeprefix("sqlite:///")).with_suffix(".locks") / _file_name(key), key, wait_s):
            yield
    else:
        raise ValueError(f"locks need a PostgreSQL or sqlite URL, got {url.split('://')[0]}://")


def _file_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24] + ".lock"


def _retry(try_once, key: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while not try_once():
        if time.monotonic() >= deadline:
            raise LockHeld(f"{key!r} is held by another process")
        time.sleep(0.2)


@contextmanager
def _advisory(key: str, url: str, wait_s: float) -> Iterator[None]:
    import sqlalchemy

    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    lock_id = _key_id(key)
    try:
        with engine.connect() as conn:

            def try_once() -> bool:
                return bool(conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:id)"), {"id": lock_id}).scalar())

            _retry(try_once, key, wait_s)
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
    finally:
        engine.dispose()


@contextmanager
def _file_lock(path: Path, key: str, wait_s: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:

        def try_once() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        _retry(try_once, key, wait_s)
        try:
            handle.truncate(0)
            handle.write(key)
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
