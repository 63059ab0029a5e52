"""Prompt methods, one folder each, registered by name: a new method is one folder and one line here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Union

from pydantic import Field

from deptune.methods.base import PromptConfig, PromptModel
from deptune.methods.dept import DePTConfig, DePTModel
from deptune.methods.mpt import MPTConfig, MPTModel
from deptune.methods.prompt_tuning import PromptTuningConfig, PromptTuningModel
from deptune.models import Backbone


@dataclass(frozen=True)
class Method:
    config: type[PromptConfig]
    model: type[PromptModel]


METHODS: dict[str, Method] = {
    "prompt_tuning": Method(PromptTuningConfig, PromptTuningModel),
    "dept": Method(DePTConfig, DePTModel),
    "mpt": Method(MPTConfig, MPTModel),
}

# The `method:` section of a spec: its `name` picks the config class, so each method's keys are checked.
MethodConfig = Annotated[Union[tuple(m.config for m in METHODS.values())], Field(discriminator="name")]


def build_model(backbone: Backbone, config: PromptConfig) -> PromptModel:
    """Wrap the frozen backbone in the method's adapter (initialised from `init_from` when given)."""
    model = METHODS[config.name].model(backbone, config)
    if config.init_from is not None:
        from deptune.methods.io import resolve_adapter_source
        model.transfer_from(resolve_adapter_source(config.init_from))
    return model


__all__ = ["METHODS", "MethodConfig", "build_model", "PromptModel", "PromptConfig",
           "DePTConfig", "MPTConfig", "MPTModel", "PromptTuningConfig", "PromptTuningModel"]
