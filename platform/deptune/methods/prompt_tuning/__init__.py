"""Vanilla prompt tuning (Lester et al., 2021): the baseline DePT is measured against."""

from deptune.methods.prompt_tuning.config import PromptTuningConfig
from deptune.methods.registry import register

register(PromptTuningConfig, model="deptune.methods.prompt_tuning.model:PromptTuningModel")
