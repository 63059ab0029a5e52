"""Decomposed Prompt Tuning (Shi & Lipani, ICLR 2024): a shorter prompt plus a low-rank update of the
input token embeddings, at the trainable-parameter cost of a longer prompt."""

from deptune.methods.dept.config import DePTConfig
from deptune.methods.registry import register

register(DePTConfig, model="deptune.methods.dept.model:DePTModel")
