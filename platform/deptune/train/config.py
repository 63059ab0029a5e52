"""The `train:` section of a spec."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_serializer,
    model_validator,
)

from deptune.methods.config import LR_PREFIX
from deptune.spec_base import StrictModel, rng_seed


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):  # as every number of a spec (StrictModel): `lr_prompt: true` is not 1
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


LearningRate = Annotated[float, BeforeValidator(_not_a_boolean), Field(gt=0, allow_inf_nan=False)]

MAX_STEPS = 10**9
"""More optimizer steps than any run makes (and well inside every int64 counter Ray, Optuna and MLflow keep)."""
SELECTED_BY = "objective"
"""In each evaluation's report: the task's first validation metric (higher is better), by which the loop keeps
its best adapter whatever a sweep ranks trials by (a sweep may rank them by their training loss or speed)."""
IMPROVED_AT = "improved_at_step"
"""In each evaluation's report: its step if it improved the best adapter, else 0. Ray keeps checkpoints by
it (`keep_checkpoints`), so the latest improvement, which holds the best adapter (a tie keeps the earlier
step), is never deleted: kept by the objective, a later tied checkpoint would push it out."""


RESUMED_FROM = "resumed_from_step"
"""In each evaluation's report: the step of the checkpoint this run of the loop resumed from (0: a fresh
start). A trial restarted after a lost worker or node says here that it resumed rather than restarted."""


class ResourcesConfig(StrictModel):
    """What one training run (one sweep trial) asks of the Ray cluster."""

    workers: PositiveInt = Field(1, description="Ray Train workers (DDP ranks)")
    cpus_per_worker: PositiveFloat = 1.0
    gpus_per_worker: NonNegativeFloat = Field(0.0, description="0: CPU (gloo); fractions share a GPU (one worker)")
    runner: Literal["auto", "tune", "train"] = Field(
        "auto",
        description="where a sweep trial trains: tune = inside its Ray Tune trial actor (one worker; the "
        "actor, its imports, the frozen backbone and the tokenised data are reused by the next "
        "trial), train = a Ray Train run (DDP over `workers`); auto = tune for one worker, "
        "train for several",
    )
    wait_for_autoscaler: bool = Field(
        False,
        description="when the cluster is too small, wait for new nodes "
        "(bounded by Ray's worker-group start timeout) instead "
        "of failing at once",
    )

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    @property
    def resolved_runner(self) -> Literal["tune", "train"]:
        """The runner `auto` resolves to."""
        if self.runner != "auto":
            return self.runner
        return "tune" if self.workers == 1 else "train"

    @model_validator(mode="after")
    def _tune_runs_one_worker(self) -> ResourcesConfig:
        if self.runner == "tune" and self.workers > 1:
            raise ValueError(
                f"resources.runner: tune trains in the trial actor, one worker; workers={self.workers} "
                f"needs runner train (or auto)"
            )
        return self

    @model_validator(mode="after")
    def _fractional_gpus_need_one_worker(self) -> ResourcesConfig:
        if 0 < self.gpus_per_worker < 1 and self.workers > 1:
            raise ValueError(
                f"resources.gpus_per_worker: {self.gpus_per_worker} with workers={self.workers}: NCCL cannot run "
                f"two ranks on one GPU; use whole GPUs for DDP or one worker per fractional GPU"
            )
        return self


class TrainConfig(StrictModel):
    steps: PositiveInt = Field(1000, le=MAX_STEPS, description="optimizer steps")
    batch_size: PositiveInt = Field(32, description="global batch size (examples per optimizer step)")
    eval_batch_size: PositiveInt = 64
    lr: dict[str, LearningRate] = Field(
        default_factory=dict,
        description="written lr_<group>: each learning-rate group's rate (lr_prompt, lr_lowrank, lr_head, or "
        "a method's own); a group not given trains at the method's default",
    )
    warmup_steps: NonNegativeInt = Field(100, le=MAX_STEPS, description="linear warm-up, then linear decay to 0")
    adam_eps: PositiveFloat = 1e-6
    weight_decay: NonNegativeFloat = 0.0
    max_grad_norm: PositiveFloat = 1.0
    eval_every: PositiveInt = Field(
        100, le=MAX_STEPS, description="evaluate (and keep the best adapter) every K steps and at the last"
    )
    max_target_length: PositiveInt = Field(8, description="tokens of the verbalised label")
    max_new_tokens: PositiveInt = Field(20, description="greedy generation length at evaluation")
    seed: int = Field(42, description="any integer; the generators get rng_seed (itself when 0 <= seed < 2**32)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on GPU")
    output_dir: Path = Path("runs/train")
    evaluate_test: bool = Field(True, description="score the best adapter on the test split at the end")
    micro_batch_size: PositiveInt | None = Field(
        None, description="most examples per forward on one worker; more are accumulated (default: no limit)"
    )
    max_failures: int = Field(
        2,
        ge=-1,
        description="restarts from the last checkpoint after a Ray Train worker or a "
        "trial's Tune actor dies (-1: unlimited)",
    )
    keep_checkpoints: PositiveInt = Field(
        2,
        description="checkpoints kept: the latest improvements of the best adapter (the latest checkpoint is also kept)",
    )
    storage_path: str | None = Field(
        None, description="Ray Train storage (shared or s3:// on a multi-node cluster); default: <output_dir>/ray"
    )

    @model_validator(mode="before")
    @classmethod
    def _learning_rates_by_group(cls, data: Any) -> Any:
        """`lr_<group>: rate` keys are the `lr` mapping (one spelling for a group's rate, everywhere)."""
        if not isinstance(data, dict):
            return data
        if "lr" in data:
            raise ValueError("train.lr: write each group's rate as its own key, e.g. lr_prompt: 0.3")
        rates = {
            k.removeprefix(LR_PREFIX): v for k, v in data.items() if isinstance(k, str) and k.startswith(LR_PREFIX)
        }
        return {**{k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith(LR_PREFIX))}, "lr": rates}

    @model_serializer(mode="wrap")
    def _flat_learning_rates(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        rates = data.pop("lr", {})  # absent when a dump excludes it
        return {**data, **{LR_PREFIX + group: rate for group, rate in rates.items()}}

    @property
    def rng_seed(self) -> int:
        """`seed` as every generator takes it (`spec_base.rng_seed`): a huge or negative seed works too."""
        return rng_seed(self.seed)

    def ray_storage(self) -> str:
        """Where Ray Train and Tune keep runs and checkpoints."""
        return self.storage_path or str((self.output_dir / "ray").resolve())

    @model_validator(mode="after")
    def _schedule_fits(self) -> TrainConfig:
        if self.warmup_steps >= self.steps:
            raise ValueError(f"train.warmup_steps: {self.warmup_steps} must be < train.steps ({self.steps})")
        return self


class DistillConfig(StrictModel):
    """MPT's source-stage objective (Wang et al., 2023): L_PLM + weight * (L_logits + L_hidden), one lambda for
    both distillation terms as the paper writes it. L_logits is KL(teacher || student) of the output
    distributions; L_hidden the MSE of the last-layer hidden states (encoder and decoder for seq2seq)."""

    weight: NonNegativeFloat = Field(
        1.0, description="lambda: the weight of L_logits + L_hidden beside the task loss L_PLM"
    )
    temperature: PositiveFloat = Field(1.0, description="softmax temperature of the KL term")

    @model_validator(mode="before")
    @classmethod
    def _one_lambda(cls, data: Any) -> Any:
        if isinstance(data, dict) and ({"kl_weight", "mse_weight"} & set(data)):
            key = "kl_weight" if "kl_weight" in data else "mse_weight"
            raise ValueError(
                f"distill.{key}: replaced by distill.weight, the paper's one lambda in "
                f"L_PLM + lambda * (L_logits + L_hidden)"
            )
        return data


class MixingConfig(StrictModel):
    """How MPT's source stage mixes its tasks into each batch."""

    strategy: Literal["proportional", "balanced"] = Field(
        "proportional",
        description="proportional: each example's task drawn in proportion to the tasks' "
        "(capped) training sizes, examples-proportional mixing as the MPT paper; "
        "balanced: batch_size / K examples of every task each step",
    )
    size_cap: PositiveInt | None = Field(
        2**19,
        description="proportional: a task counts as at most this many examples (T5's K = 2^19 = "
        "524,288; above every GLUE source); null: no cap",
    )
