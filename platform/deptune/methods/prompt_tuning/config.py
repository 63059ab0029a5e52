from __future__ import annotations

from typing import Literal

from deptune.methods.config import PromptConfig


class PromptTuningConfig(PromptConfig):
    """An l-token soft prompt, nothing else."""

    name: Literal["prompt_tuning"] = "prompt_tuning"
