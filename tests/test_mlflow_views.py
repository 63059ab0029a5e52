"""The experiment's saved runs-table view (an experiment tag in the MLflow UI's format), on a real sqlite
MLflow store: the trials only, best first, with m, r, the learning rates, the best objective and the state."""

from __future__ import annotations

import json

from mlflow import MlflowClient

from deptune.tracking.store import TRIALS_VIEW, VIEW_TAG_PREFIX, ensure_experiment, save_trials_view, trials_view_state


def test_the_trials_view_is_saved_on_the_experiment(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = ensure_experiment(uri, "views")
    state = trials_view_state(
        ["prompt_length", "rank", "lr_prompt"], ["best_objective"], ["deptune.state"], "best_objective", ascending=False
    )
    link = save_trials_view(uri, experiment, state)
    assert link == f"#/experiments/{experiment}/runs?workflowType=machine_learning&viewStateShareKey={TRIALS_VIEW}"
    tag = MlflowClient(uri).get_experiment(experiment).tags[VIEW_TAG_PREFIX + TRIALS_VIEW]
    envelope = json.loads(tag)
    assert envelope["name"] == "deptune: trials, best first" and isinstance(envelope["createdAt"], int)
    saved = json.loads(envelope["state"])
    assert saved["selectedColumns"] == [
        "params.`prompt_length`",
        "params.`rank`",
        "params.`lr_prompt`",
        "metrics.`best_objective`",
        "tags.`deptune.state`",
    ]
    assert saved["orderByKey"] == "metrics.`best_objective`" and saved["orderByAsc"] is False
    assert saved["searchFilter"] == "tags.`deptune.role` = 'trial'"
