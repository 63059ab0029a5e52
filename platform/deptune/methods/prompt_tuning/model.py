from __future__ import annotations

from deptune.methods.model import PromptModel


class PromptTuningModel(PromptModel):
    """PT is the shared prompt machinery with no embedding update."""
