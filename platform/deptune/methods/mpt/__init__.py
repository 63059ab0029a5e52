"""Multitask Prompt Tuning (Wang et al., ICLR 2023): one prompt P* shared by all tasks, modulated per task
by a rank-r product u_k v_k^T, learned on source tasks and transferred to a target task."""

from deptune.methods.catalog import register
from deptune.methods.mpt.config import MPTConfig

register(MPTConfig, model="deptune.methods.mpt.model:MPTModel")
