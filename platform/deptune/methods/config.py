"""What every prompt method's config shares, and how a method tells the layers above what it is.

Torch-free on purpose: `deptune validate` and the sweep driver read method configs without loading a
model. A method's config class is the one place that knows its searchable dimensions, its learning-rate
groups, its trainable-parameter count and what a trial logs about it; sweep/, tracking/ and the checks
ask it instead of branching on method names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, PositiveInt, model_validator

from deptune.spec_base import FloatRange, Range, StrictModel

PromptInit = Literal["text", "sample_vocab", "random"]
CausalRule = Literal["aligned", "official"]
REGISTRY_URI_PREFIX = "models:/"
Dimension = Range | int
"""A search dimension as a method resolves it: a range that is searched, or an int that is fixed."""


def is_registry_uri(ref: str | Path | None) -> bool:
    return isinstance(ref, str) and ref.startswith(REGISTRY_URI_PREFIX)


def _adapter_ref(value: Any) -> Any:
    """A registry URI stays a string (a Path would mangle it, and workers would make it 'absolute')."""
    if is_registry_uri(value):
        return value
    return Path(value) if isinstance(value, str) else value


AdapterRef = Annotated[Path | str, BeforeValidator(_adapter_ref)]
"""A saved adapter: a local folder, or a registered MLflow model version (`models:/NAME/VERSION`, `models:/NAME@alias`)."""


class PromptConfig(StrictModel):
    """Fields every prompt method has; `prompt_length` is l for PT and m for DePT."""

    name: str
    prompt_length: PositiveInt = Field(100, description="soft-prompt tokens (l for PT, m for DePT)")
    max_length: PositiveInt = Field(256, description="s: the longest input (tokens) the adapter accepts")
    init: PromptInit = "sample_vocab"
    init_text: str | None = Field(None, description="text whose embeddings initialise the prompt (init: text)")
    init_from: AdapterRef | None = Field(
        None, description="a saved adapter to start from (transfer): a folder or models:/NAME/VERSION"
    )
    causal_rule: CausalRule = Field(
        "aligned",
        description="decoder-only backbones: aligned (rows and positions count from the first real token; "
        "the answer gets no low-rank update; training and generation see the same layout) "
        "or official (the official DePT code's: input '{x} Label : ', answer "
        "tokenizer(y) + pad, each sequence laid out as if left-padded to s, so a token's "
        "low-rank row and training position count back from s and the answer is updated "
        "too); only decoder-only backbones take official",
    )

    learning_rates: ClassVar[tuple[str, ...]] = ("lr_prompt",)
    """The `train.lr_*` settings this method's tensors train with (an encoder's head adds lr_head)."""
    default_ranges: ClassVar[Mapping[str, Range]] = {"lr_prompt": FloatRange(low=0.3, high=0.4)}
    """Searched when the spec's `search` omits them (the paper's winners)."""

    @model_validator(mode="after")
    def _text_init_needs_text(self) -> PromptConfig:
        if self.init == "text" and not self.init_text:
            raise ValueError("method.init_text: required when method.init is 'text'")
        return self

    # ----- what the search may vary ----------------------------------------------------------------------
    def refused_search_keys(self) -> dict[str, str]:
        """Search keys this method cannot take, each with the reason a user is shown."""
        return {
            "rank": f"{self.name} has no low-rank pair; remove it",
            "lr_lowrank": f"{self.name} has no low-rank pair; remove it",
        }

    def search_errors(self, ranges: Mapping[str, Range]) -> list[str]:
        """Problems of the given ranges that need no hidden size ('search.key: message')."""
        return []

    def dimensions(self, ranges: Mapping[str, Range], hidden_size: int) -> tuple[dict[str, Dimension], list[str]]:
        """The method's dimensions for a backbone of `hidden_size`: the given ranges, the method's defaults
        for the rest, fixed values for what is not searched; or the errors that make the search infeasible."""
        dims: dict[str, Dimension] = {"prompt_length": ranges.get("prompt_length") or self.prompt_length}
        for key in self.learning_rates:
            dims[key] = ranges.get(key) or self.default_ranges[key]
        return dims, []

    def derived(self, values: Mapping[str, Any], hidden_size: int) -> dict[str, Any]:
        """Values that follow from the sampled ones (DePT with a budget: its rank)."""
        return {}

    def adapter_params(self, values: Mapping[str, Any], hidden_size: int) -> int:
        """Trainable adapter tensors for these values (an encoder's head is counted apart)."""
        return int(values.get("prompt_length", self.prompt_length)) * hidden_size

    def budget_params(self, hidden_size: int) -> int | None:
        """The trainable count every trial keeps to (DePT with a budget), else None."""
        return None

    # ----- what a run records ----------------------------------------------------------------------------
    def logged_params(self) -> dict[str, Any]:
        """The method's MLflow params (its learning rates are logged from the train section)."""
        return {
            "method": self.name,
            "prompt_length": self.prompt_length,
            "max_length": self.max_length,
            "init": self.init,
        }

    def source_errors(self, record: Any) -> list[str]:
        """Why a source adapter (its `adapter_config.json` record) cannot initialise this method."""
        if record.method != self.name:
            return [
                f"method.init_from: {self.init_from} holds a {record.method} adapter; a {self.name} run "
                f"starts from a {self.name} adapter"
            ]
        if record.prompt_length != self.prompt_length:
            return [
                f"method.prompt_length: {self.prompt_length}, but the source adapter {self.init_from} has "
                f"{record.prompt_length} prompt tokens"
            ]
        return []
