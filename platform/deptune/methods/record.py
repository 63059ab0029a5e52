"""`adapter_config.json`: what a saved adapter is (torch-free, so checks read it without loading torch)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from deptune.spec_base import StrictModel

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)


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
    family: Literal["seq2seq", "causal", "encoder"]
    task: str | None
    init: str
    method_config: dict
    deptune_version: str


def read_record(directory: str | Path) -> AdapterRecord:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no adapter at {directory}: {CONFIG_FILE} is missing")
    return AdapterRecord.model_validate_json(path.read_text())


def copy_adapter(source: str | Path, destination: str | Path) -> Path:
    """The adapter's two files (not a checkpoint's training state) into `destination`."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.copy2(Path(source) / name, destination / name)
    return destination
