"""The `tracking:` section of a sweep spec: where MLflow runs go and which registered model gets the best adapter."""

from __future__ import annotations

from pydantic import Field, field_validator

from deptune.spec_base import StrictModel
from deptune.tracking.catalog import TRACKERS


class TrackingConfig(StrictModel):
    tracker: str = Field("mlflow", description="the tracker a sweep records to (`tracking/catalog.py`)")
    uri: str | None = Field(
        None,
        description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db (artifacts in ./mlartifacts)",
    )
    experiment: str | None = Field(None, min_length=1, description="MLflow experiment (default: the study name)")
    registered_model: str | None = Field(
        None, min_length=1, description="Model Registry name for the best adapter (default: deptune-<task>-<method>)"
    )
    register_best: bool = Field(
        True, description="register the execution's best adapter and move `champion` when it beats the current one"
    )

    @field_validator("tracker")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in TRACKERS:
            raise ValueError(f"no tracker named {name!r}; registered: {', '.join(sorted(TRACKERS))}")
        return name
