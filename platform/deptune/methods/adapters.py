"""Building a method's model on a frozen backbone, fresh or from a saved adapter (local folders only:
`models:/` references are resolved by the drivers before a spec reaches this layer)."""

from __future__ import annotations

from pathlib import Path

from deptune.backbones import Backbone
from deptune.methods.catalog import get_method
from deptune.methods.config import PromptConfig, is_registry_uri
from deptune.methods.io import load_adapter_tensors
from deptune.methods.model import PromptModel
from deptune.methods.record import read_record


def build_model(backbone: Backbone, config: PromptConfig) -> PromptModel:
    """Wrap the frozen backbone in the method's adapter (initialised from `init_from` when given)."""
    model = get_method(config.name).model_class()(backbone, config)
    if config.init_from is not None:
        if is_registry_uri(config.init_from):
            raise ValueError(
                f"method.init_from: {config.init_from} was not fetched from the registry; the "
                f"driver (deptune train / sweep) resolves models:/ references before training"
            )
        model.transfer_from(Path(config.init_from))
    return model


def load_adapter(backbone: Backbone, directory: str | Path) -> PromptModel:
    """Rebuild the saved adapter on `backbone` and load its tensors (all of them, the head included)."""
    record = read_record(directory)
    if record.hidden_size != backbone.hidden_size:
        raise ValueError(
            f"adapter at {directory} was trained for hidden size d={record.hidden_size} "
            f"({record.backbone}); {backbone.name} has d={backbone.hidden_size}"
        )
    if record.family != backbone.family:
        raise ValueError(
            f"adapter at {directory} is for a {record.family} backbone; {backbone.name} is {backbone.family}"
        )
    config = get_method(record.method).config.model_validate(record.method_config)
    model = get_method(config.name).model_class()(backbone, config)
    load_adapter_tensors(model, directory)
    return model
