from __future__ import annotations

from deptune.methods.base import PromptModel


class PromptTuningModel(PromptModel):
    """PT is the shared prompt machinery with no embedding update."""
