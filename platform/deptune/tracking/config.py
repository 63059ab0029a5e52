"""The `tracking:` section of a sweep spec: where MLflow runs go and which registered model gets the best adapter."""

from __future__ import annotations

from pydantic import Field

from deptune.spec_base import StrictModel


class TrackingConfig(StrictModel):
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
