"""The run spec (backbone, task, method, train, resources: one training run) and MPT's source spec
(`source_tasks` instead of `task`: the multitask source stage). The sweep layer extends the run spec
(`deptune.sweep.config.SweepSpec`); `deptune.specs` reads any of them from YAML."""

from __future__ import annotations

from pydantic import Field, model_validator

from deptune.backbones import BackboneConfig
from deptune.methods.catalog import MethodConfig
from deptune.methods.config import PromptConfig, lr_key
from deptune.methods.mpt.config import MPTConfig
from deptune.methods.prompt_tuning.config import PromptTuningConfig
from deptune.spec_base import StrictModel
from deptune.tasks.config import TaskConfig
from deptune.train.config import DistillConfig, MixingConfig, ResourcesConfig, TrainConfig


def unknown_lr_groups(section: str, train: TrainConfig, method: type[PromptConfig]) -> None:
    """A rate for a group the method does not train is an error naming the key (a typo would train nothing)."""
    groups = method.learning_rate_groups()
    for group in train.lr:
        if group not in groups:
            raise ValueError(
                f"{section}.{lr_key(group)}: {method.model_fields['name'].default} has no learning-rate group "
                f"{group!r}; its groups: {', '.join(lr_key(g) for g in sorted(groups))}"
            )


class RunSpec(StrictModel):
    """One training run: backbone + task + method + train settings."""

    backbone: BackboneConfig
    task: TaskConfig
    method: MethodConfig
    train: TrainConfig = TrainConfig()
    resources: ResourcesConfig = ResourcesConfig()

    @model_validator(mode="after")
    def _learning_rates_are_the_methods(self) -> RunSpec:
        unknown_lr_groups("train", self.train, type(self.method))
        return self

    def learning_rates(self) -> dict[str, float]:
        """Each of the method's groups at the spec's rate, else the method's default."""
        return self.method.learning_rates(self.train.lr)

    @model_validator(mode="after")
    def _batch_splits_across_workers(self) -> RunSpec:
        if self.train.batch_size % self.resources.workers:
            raise ValueError(
                f"train.batch_size: {self.train.batch_size} must be divisible by resources.workers "
                f"({self.resources.workers}): each rank takes an equal slice of the global batch"
            )
        if getattr(self.method, "source_tasks", None):
            raise ValueError(
                "method.source_tasks: a run trains one task; a source adapter over several tasks "
                "comes from `deptune mpt-source` (a spec with source_tasks)"
            )
        return self


class SourceSpec(StrictModel):
    """MPT's source stage (`deptune mpt-source`): a vanilla-PT teacher per source task (`teacher` settings),
    then P* and one (u, v) per task trained on the multitask mixture (`mixing`: examples-proportional by
    default) with L_PLM + lambda * (L_logits + L_hidden) (`train` and `distill` settings). Each of these runs
    is a Ray Train job with `resources` (or runs in this process: `deptune mpt-source --local`)."""

    backbone: BackboneConfig
    source_tasks: list[TaskConfig] = Field(min_length=1, description="the source tasks, each with its data")
    method: MethodConfig
    teacher: TrainConfig = Field(TrainConfig(), description="each teacher's training run (vanilla PT, l tokens)")
    train: TrainConfig = Field(
        TrainConfig(),
        description="the multitask stage; batch_size examples per step, "
        "mixed across the tasks as `mixing` says; the source "
        "adapter lands in output_dir/best, the teachers in "
        "output_dir/teachers",
    )
    distill: DistillConfig = DistillConfig()
    mixing: MixingConfig = MixingConfig()
    resources: ResourcesConfig = Field(
        ResourcesConfig(), description="the workers of each teacher's and the student's Ray Train run"
    )

    @model_validator(mode="after")
    def _balanced_and_fresh(self) -> SourceSpec:
        names = self.task_names
        if not isinstance(self.method, MPTConfig):
            raise ValueError(f"method.name: the source stage trains mpt, not {self.method.name}")
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"source_tasks.{i}.name: {name} is already a source task; give each task once")
        for section in ("teacher", "train"):
            if getattr(self, section).batch_size % self.resources.workers:
                raise ValueError(
                    f"{section}.batch_size: {getattr(self, section).batch_size} must be divisible by "
                    f"resources.workers ({self.resources.workers}): each rank takes an equal slice"
                )
        if self.mixing.strategy == "balanced" and self.train.batch_size % len(names):
            raise ValueError(
                f"train.batch_size: {self.train.batch_size} must be divisible by the {len(names)} "
                f"source tasks (each step takes the same number of examples from each: "
                f"mixing.strategy balanced)"
            )
        if self.method.init_from is not None:
            raise ValueError("method.init_from: the source stage starts fresh; init_from is for target runs")
        unknown_lr_groups("teacher", self.teacher, PromptTuningConfig)
        unknown_lr_groups("train", self.train, type(self.method))
        if self.method.source_tasks and self.method.source_tasks != names:
            raise ValueError(
                f"method.source_tasks: {self.method.source_tasks} differs from source_tasks {names}; "
                f"leave it out (it is filled from source_tasks)"
            )
        return self

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.source_tasks]

    def student_method(self) -> MPTConfig:
        return self.method.model_copy(update={"source_tasks": self.task_names})
