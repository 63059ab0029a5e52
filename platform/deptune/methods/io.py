"""Adapter tensors on disk: `adapter_model.safetensors` beside its `adapter_config.json` (never pickle).

Only adapter tensors are written (and an encoder's head): kilobytes, never the backbone. Models are duck
typed here (anything with `config`, `hidden_size`, `family`, `method_tensors()` and `adapter_tensors()`),
so this module sits below the model classes that use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from deptune import __version__
from deptune.methods.record import CONFIG_FILE, WEIGHTS_FILE, AdapterRecord


def save_adapter(
    model: Any, directory: str | Path, backbone_name: str, backbone_revision: str | None = None, task: str | None = None
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    record = AdapterRecord(
        method=cfg.name,
        prompt_length=cfg.prompt_length,
        rank=getattr(cfg, "rank", None),
        max_length=cfg.max_length,
        alpha=getattr(cfg, "alpha", None),
        hidden_size=model.hidden_size,
        backbone=backbone_name,
        backbone_revision=backbone_revision,
        family=model.family,
        task=task,
        init=cfg.init,
        method_config=cfg.model_dump(mode="json", exclude={"init_from"}),
        deptune_version=__version__,
    )
    (directory / CONFIG_FILE).write_text(record.model_dump_json(indent=2))
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.adapter_tensors().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "method": cfg.name})
    return directory


def read_tensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a saved adapter, by file key."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no adapter weights at {path}")
    return load_file(str(path))


def load_adapter_tensors(model: Any, directory: str | Path, skip_head: bool = False) -> None:
    """Copy saved tensors into `model`; a missing, unexpected or mis-shaped tensor is an error.

    `skip_head` (transfer): take only the method's tensors; a source task's head is left behind.
    """
    path = Path(directory) / WEIGHTS_FILE
    saved = read_tensors(directory)
    expected = model.method_tensors() if skip_head else model.adapter_tensors()
    if skip_head:
        saved = {k: v for k, v in saved.items() if k in expected}
    missing, unexpected = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
    mismatched = [
        f"{k}: file {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in saved and saved[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"adapter {path} does not fit this model: missing {missing}, unexpected {unexpected}, "
            f"shape mismatch {mismatched}"
        )
    with torch.no_grad():
        for key, param in expected.items():
            param.copy_(saved[key].to(param.dtype))
