"""A fresh MLflow sqlite store in a folder, as a copy of one that MLflow created and migrated once per test
process: creating one runs MLflow's schema migrations (about 1.7 s), and the suite makes about twenty."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

DB_NAME = "mlflow.db"


@cache
def _template() -> Path:
    from mlflow import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="deptune-mlflow-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / DB_NAME
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # MLflow creates and migrates it
    return path


def mlflow_store(folder: Path, name: str = DB_NAME) -> str:
    """The sqlite URI of the MLflow store `folder/name`, made empty (as MLflow would) unless it exists."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if not target.exists():
        shutil.copyfile(_template(), target)
    return f"sqlite:///{target}"
