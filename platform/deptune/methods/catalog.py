"""Prompt methods by name. Each method folder registers itself (its torch-free config class and where
its model class lives); a new method is one folder and one `register` call, nothing else.

`MethodConfig` is the `method:` section of a spec: its `name` picks the registered config class, so each
method's own keys are checked. Torch-free: model classes are imported only when a model is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import SerializeAsAny, WrapValidator

from deptune.methods.config import PromptConfig

BUILTIN = ("deptune.methods.prompt_tuning", "deptune.methods.dept", "deptune.methods.mpt")
"""The shipped methods' packages, imported on first use (each registers itself)."""


@dataclass(frozen=True)
class Method:
    config: type[PromptConfig]
    model: str | type  # "package.module:Class", or the class itself (a method defined in a test)

    def model_class(self) -> type:
        if isinstance(self.model, type):
            return self.model
        module, _, name = self.model.partition(":")
        return getattr(importlib.import_module(module), name)


_METHODS: dict[str, Method] = {}


def register(config: type[PromptConfig], model: str | type) -> None:
    """Make a method known by its config's `name` default (e.g. `name: Literal["dept"] = "dept"`)."""
    name = config.model_fields["name"].default
    if not isinstance(name, str):
        raise TypeError(f"{config.__name__}.name needs a default: the method's registered name")
    method = Method(config, model)
    if _METHODS.get(name, method) != method:  # the same method again (a worker's `restore`) is no conflict
        raise ValueError(f"a method named {name!r} is registered already ({_METHODS[name].config.__name__})")
    _METHODS[name] = method


def methods() -> dict[str, Method]:
    """Every registered method (the built-in ones are imported, and so registered, on first use)."""
    for package in BUILTIN:
        importlib.import_module(package)
    return dict(_METHODS)


def get_method(name: str) -> Method:
    known = methods()
    if name not in known:
        raise ValueError(f"method.name: unknown method {name!r}; known: {', '.join(sorted(known))}")
    return known[name]


def snapshot() -> dict[str, Method]:
    """Every registered method, to re-register in another process (a Ray worker) with `restore`."""
    return methods()


def restore(registered: dict[str, Method]) -> None:
    for method in registered.values():
        register(method.config, method.model)


def _parse(value: Any, handler) -> PromptConfig:
    if isinstance(value, PromptConfig):
        return value
    name = value.get("name") if isinstance(value, dict) else None
    if not isinstance(name, str):
        raise ValueError(f"method.name: required; known methods: {', '.join(sorted(methods()))}")
    return get_method(name).config.model_validate(value)


MethodConfig = Annotated[SerializeAsAny[PromptConfig], WrapValidator(_parse)]
