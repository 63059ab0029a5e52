"""Adapters on disk: `adapter_config.json` + `adapter_model.safetensors` (never pickle).

Only adapter tensors are written (and an encoder's head): kilobytes, never the backbone. Every load of a
source adapter for transfer (DePT's `init_from`, MPT's source adapter) goes through `resolve_adapter_source`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import TypeAdapter
from safetensors.torch import load_file, save_file

from deptune import __version__
from deptune.methods import METHODS, MethodConfig, PromptModel
from deptune.methods.base import REGISTRY_URI_PREFIX
from deptune.models import Backbone, Family
from deptune.spec_base import StrictModel

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


class AdapterRecord(StrictModel):
    """adapter_config.json: enough to rebuild the adapter and refuse the wrong backbone."""

    method: str
    prompt_length: int  # m (l for PT)
    rank: int | None  # r
    max_length: int  # s
    alpha: float | None
    hidden_size: int  # d
    backbone: str
    backbone_revision: str | None
    family: Family
    task: str | None
    init: str
    method_config: dict
    deptune_version: str


def save_adapter(model: PromptModel, directory: str | Path, backbone_name: str,
                 backbone_revision: str | None = None, task: str | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    record = AdapterRecord(
        method=cfg.name, prompt_length=cfg.prompt_length, rank=getattr(cfg, "rank", None),
        max_length=cfg.max_length, alpha=getattr(cfg, "alpha", None), hidden_size=model.hidden_size,
        backbone=backbone_name, backbone_revision=backbone_revision, family=model.family, task=task,
        init=cfg.init, method_config=cfg.model_dump(mode="json", exclude={"init_from"}),
        deptune_version=__version__)
    (directory / CONFIG_FILE).write_text(record.model_dump_json(indent=2))
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.adapter_tensors().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "method": cfg.name})
    return directory


def is_registry_uri(ref: str | Path) -> bool:
    return isinstance(ref, str) and ref.startswith(REGISTRY_URI_PREFIX)


def resolve_adapter_source(ref: str | Path) -> Path:
    """The local folder holding a source adapter: a path as given; a registered MLflow model version
    (`models:/NAME/VERSION` or `models:/NAME@alias`) is downloaded and its `adapter/` artifact returned."""
    if is_registry_uri(ref):  # drivers localize these first (tracking.registry.localize_sources); this is the
        import os                # in-process fallback, against $MLFLOW_TRACKING_URI
        import tempfile
        from deptune.tracking.registry import fetch_adapter
        return fetch_adapter(str(ref), os.environ.get("MLFLOW_TRACKING_URI"),
                             Path(tempfile.mkdtemp(prefix="deptune-source-")) / "model")
    return Path(ref)


def read_tensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a saved adapter, by file key."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no adapter weights at {path}")
    return load_file(str(path))


def read_record(directory: str | Path) -> AdapterRecord:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no adapter at {directory}: {CONFIG_FILE} is missing")
    return AdapterRecord.model_validate_json(path.read_text())


def load_adapter(backbone: Backbone, directory: str | Path) -> PromptModel:
    """Rebuild the saved adapter on `backbone` and load its tensors (all of them, the head included)."""
    record = read_record(directory)
    if record.hidden_size != backbone.hidden_size:
        raise ValueError(f"adapter at {directory} was trained for hidden size d={record.hidden_size} "
                         f"({record.backbone}); {backbone.name} has d={backbone.hidden_size}")
    if record.family != backbone.family:
        raise ValueError(f"adapter at {directory} is for a {record.family} backbone; {backbone.name} is {backbone.family}")
    config = TypeAdapter(MethodConfig).validate_python(record.method_config)
    model = METHODS[config.name].model(backbone, config)
    load_adapter_tensors(model, directory)
    return model


def load_adapter_tensors(model: PromptModel, directory: str | Path, skip_head: bool = False) -> None:
    """Copy saved tensors into `model`; a missing, unexpected or mis-shaped tensor is an error.

    `skip_head` (transfer): take only the method's tensors; a source task's head is left behind.
    """
    path = Path(directory) / WEIGHTS_FILE
    saved = read_tensors(directory)
    expected = model.method_tensors() if skip_head else model.adapter_tensors()
    if skip_head:
        saved = {k: v for k, v in saved.items() if k in expected}
    missing, unexpected = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
    mismatched = [f"{k}: file {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in saved and saved[k].shape != v.shape]
    if missing or unexpected or mismatched:
        raise ValueError(f"adapter {path} does not fit this model: missing {missing}, unexpected {unexpected}, "
                         f"shape mismatch {mismatched}")
    with torch.no_grad():
        for key, param in expected.items():
            param.copy_(saved[key].to(param.dtype))
