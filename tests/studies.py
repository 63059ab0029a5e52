"""Reading a sqlite Optuna study that another process (a sweep's driver) is creating."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import optuna


def study_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, [] until the job's driver has created it. Read-only until then: opening an
    RDBStorage on a database being created would race the driver's schema creation (both insert the
    alembic version)."""
    path = Path(url.removeprefix("sqlite:///"))
    if not path.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as conn:
            ready = (
                conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0]
                and conn.execute("SELECT count(*) FROM studies WHERE study_name = ?", (name,)).fetchone()[0]
            )
    except sqlite3.OperationalError:  # no such table yet, or locked
        return []
    return optuna.load_study(study_name=name, storage=url).get_trials() if ready else []
