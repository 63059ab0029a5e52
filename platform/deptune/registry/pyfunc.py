"""The registered model: an MLflow pyfunc that loads the frozen backbone (hub name and revision, a local
folder, or a tiny offline one) plus the adapter, and maps the task's text columns to label predictions.

It is saved as models-from-code (`model_code.py` is the `python_model`), never pickled, and carries what it
needs to be served anywhere: deptune's own package as the model's code (`code/deptune`, which MLflow puts on
`sys.path` when it loads the model) and deptune's runtime requirements as the model's (`requirements.txt`),
so `mlflow models serve` works in a fresh environment, not only where deptune is installed."""

from __future__ import annotations

import importlib.metadata
import shutil
from contextlib import contextmanager
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

import deptune
from deptune.train.spec import RunSpec

ADAPTER = "adapter"
SPEC = "spec"
OUTPUT = "label"
NAME = "label_name"
CODE = Path(__file__).with_name("model_code.py")
PACKAGE = Path(deptune.__file__).parent


def runtime_requirements() -> list[str]:
    """deptune's declared runtime requirements (its extras left out): what its code needs to load the model."""
    declared = importlib.metadata.requires("deptune") or []
    return [r for r in declared if "extra ==" not in r]


@contextmanager
def quiet_transformers():
    """Transformers' load report off: loading an encoder's backbone says its head is "MISSING ... newly
    initialized", true of the backbone alone and wrong for the model: the adapter's head is loaded next."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def label_names(task) -> dict[str, str]:
    """Verbalised label -> the task's class name ("1" -> "not_entailment" for RTE); itself without names."""
    names = getattr(task, "class_names", ()) or ()
    return {label: (names[i] if i < len(names) else label) for i, label in enumerate(task.label_names)}


def input_columns(task_name: str) -> list[str]:
    """The text fields the task formats (`label` is what the model predicts)."""
    from deptune.tasks.catalog import get_task

    task = get_task(task_name)
    fields = getattr(task, "inputs", ("sentence",)) + getattr(task, "extra_fields", ())
    return list(fields)


class AdapterModel(mlflow.pyfunc.PythonModel):
    """Backbone + adapter, rebuilt from the run's spec; predictions are the task's verbalised labels."""

    def load_context(self, context) -> None:
        from deptune.backbones import load_backbone
        from deptune.methods.adapters import load_adapter
        from deptune.tasks.catalog import get_task
        from deptune.train.loop import resolve_device

        self.spec = RunSpec.model_validate_json(Path(context.artifacts[SPEC]).read_text())
        self.task = get_task(self.spec.task.name)
        with quiet_transformers():
            self.backbone = load_backbone(self.spec.backbone, num_labels=max(1, len(self.task.label_names)))
        self.device = resolve_device(self.spec.train)
        self.model = load_adapter(self.backbone, context.artifacts[ADAPTER]).to(self.device).eval()
        self.names = label_names(self.task)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from deptune.train.data import encode
        from deptune.train.evaluate import predict

        if isinstance(model_input, dict):
            model_input = pd.DataFrame(model_input)
        placeholder = 0.0 if self.task.is_regression else self.task.label_names[0]
        rows = [{**row, "label": placeholder} for row in model_input.to_dict("records")]
        examples = [self.task.format(row) for row in rows]
        items = encode(
            examples,
            self.backbone,
            self.task,
            self.model.config.max_length,
            self.spec.train.max_target_length,
            self.model.config.causal_rule,
        )
        labels = predict(
            self.model,
            self.backbone,
            self.task,
            items,
            self.spec.train.eval_batch_size,
            self.spec.train.max_new_tokens,
            self.device,
        )
        return pd.DataFrame({OUTPUT: labels, NAME: [self.names.get(label, label) for label in labels]})


def save_pyfunc(path: Path, adapter_dir: Path, spec_file: Path, example: dict[str, list[str]]) -> Path:
    """Write the pyfunc model folder (signature and input example included) to `path`."""
    shutil.rmtree(path, ignore_errors=True)
    columns = list(example)
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", c) for c in columns]),
        outputs=Schema([ColSpec("string", OUTPUT), ColSpec("string", NAME)]),
    )
    mlflow.pyfunc.save_model(
        str(path),
        python_model=str(CODE),
        artifacts={ADAPTER: str(adapter_dir), SPEC: str(spec_file)},
        signature=signature,
        input_example=pd.DataFrame(example),
        code_paths=[str(PACKAGE)],
        pip_requirements=[*runtime_requirements(), "pandas"],
    )
    return path
