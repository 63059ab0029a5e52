"""Vanilla prompt tuning (Lester et al., 2021): the baseline DePT is measured against."""

from deptune.methods.catalog import register
from deptune.methods.prompt_tuning.config import PromptTuningConfig

register(PromptTuningConfig, model="deptune.methods.prompt_tuning.model:PromptTuningModel")
