"""Decomposed Prompt Tuning (Shi & Lipani, ICLR 2024): a shorter prompt plus a low-rank update of the
input token embeddings, at the trainable-parameter cost of a longer prompt."""

from deptune.methods.catalog import register
from deptune.methods.dept.config import DePTConfig

register(DePTConfig, model="deptune.methods.dept.model:DePTModel")
