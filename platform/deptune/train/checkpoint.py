"""Resumable checkpoints: the adapter files plus `train_state.pt` (optimizer, scheduler, step, RNG, best).

Kilobytes: adapter tensors and their optimizer moments, never the backbone. The state is loaded with
`weights_only=True` (tensors and plain values only), so a checkpoint cannot execute code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from deptune.methods.io import load_adapter_tensors, save_adapter
from deptune.methods.model import PromptModel

STATE_FILE = "train_state.pt"


@dataclass
class Progress:
    """What survives a restart besides the tensors: where we are and the best so far."""

    step: int = 0
    best_step: int = -1
    best_objective: float = float("-inf")
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_adapter: dict[str, torch.Tensor] = field(default_factory=dict)

    def improve(self, step: int, objective: float, metrics: dict[str, float], model: PromptModel) -> bool:
        """Keep this step if it beats the best (ties keep the earlier step)."""
        if self.best_step >= 0 and objective <= self.best_objective:
            return False
        self.best_step, self.best_objective, self.best_metrics = step, objective, dict(metrics)
        self.best_adapter = {k: v.detach().to("cpu", copy=True) for k, v in model.adapter_tensors().items()}
        return True


def rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    directory: Path,
    model: PromptModel,
    optimizer,
    scheduler,
    progress: Progress,
    rng_states: list[dict[str, torch.Tensor]],
    backbone_name: str,
    backbone_revision: str | None,
    task: str,
) -> Path:
    save_adapter(model, directory, backbone_name, backbone_revision, task)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_states,
            **asdict(progress),
        },
        directory / STATE_FILE,
    )
    return directory


def load_checkpoint(directory: Path, model: PromptModel, optimizer, scheduler, rank: int, world_size: int) -> Progress:
    """Restore tensors, optimizer and schedule in place; each rank takes back its own RNG stream."""
    load_adapter_tensors(model, directory)
    state = torch.load(directory / STATE_FILE, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if len(state["rng"]) == world_size:  # a resized worker group keeps its fresh per-rank seeds
        set_rng_state(state["rng"][rank])
    return Progress(
        step=state["step"],
        best_step=state["best_step"],
        best_objective=state["best_objective"],
        best_metrics=state["best_metrics"],
        best_adapter=state["best_adapter"],
    )
