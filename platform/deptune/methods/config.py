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

from deptune.spec_base import FloatRange, IntRange, Range, StrictModel

PromptInit = Literal["text", "sample_vocab", "random"]
CausalRule = Literal["aligned", "official"]
REGISTRY_URI_PREFIX = "models:/"
Dimension = Range | int | float
"""A search dimension as a method resolves it: a range that is searched, or a value that is fixed."""
HEAD_GROUP, HEAD_LR = "head", 1e-3
"""An encoder's classification head is a learning-rate group of every method (its default rate)."""
LR_PREFIX = "lr_"
"""A group's learning rate is `lr_<group>` wherever it is named: `train.lr_<group>`, `search.lr_<group>`,
the study's parameter, the MLflow param, the leaderboard's column."""


def lr_key(group: str) -> str:
    return LR_PREFIX + group


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

    lr_groups: ClassVar[Mapping[str, float]] = {"prompt": 0.3}
    """The method's learning-rate groups (`PromptModel.parameter_groups` keys) and their default rates; a
    spec sets one as `train.lr_<group>` and searches it as `search.lr_<group>`. Every method also has the
    `head` group (an encoder's classification head)."""
    search_dimensions: ClassVar[Mapping[str, type[IntRange] | type[FloatRange]]] = {"prompt_length": IntRange}
    """The method's own search dimensions besides its learning rates, each a method field whose value the
    search sets (a range of ints or of floats)."""
    default_ranges: ClassVar[Mapping[str, Range]] = {"lr_prompt": FloatRange(low=0.3, high=0.4)}
    """Searched when the spec's `search` omits them (the paper's winners)."""

    @classmethod
    def learning_rate_groups(cls) -> dict[str, float]:
        """Every group this method trains, with its default rate (the head's included)."""
        return {**cls.lr_groups, HEAD_GROUP: HEAD_LR}

    @classmethod
    def dimension_kinds(cls) -> dict[str, type[IntRange] | type[FloatRange]]:
        """Every key `search` accepts for this method, with the kind of range it takes."""
        return {**cls.search_dimensions, **{lr_key(g): FloatRange for g in cls.learning_rate_groups()}}

    def learning_rates(self, given: Mapping[str, float]) -> dict[str, float]:
        """The rate of each group: the spec's (`train.lr_<group>`), else the method's default."""
        return {group: given.get(group, default) for group, default in self.learning_rate_groups().items()}

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
        dims: dict[str, Dimension] = {key: ranges.get(key) or getattr(self, key) for key in self.search_dimensions}
        for key in map(lr_key, self.lr_groups):
            dims[key] = ranges.get(key) or self.default_ranges[key]
        if lr_key(HEAD_GROUP) in ranges:  # the head is searched only when asked (only encoders have one)
            dims[lr_key(HEAD_GROUP)] = ranges[lr_key(HEAD_GROUP)]
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
