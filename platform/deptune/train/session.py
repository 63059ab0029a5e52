"""Where the loop runs: a plain process, or one rank of a Ray Train worker group.

The loop asks its session for its rank, device, a checkpoint to resume from, and hands it each
evaluation's metrics with a checkpoint folder (rank 0's); collectives are no-ops on one process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from deptune.methods.record import copy_adapter

Reporter = Callable[[dict[str, float], Path | None], None]
"""Called with each evaluation's metrics and, when the adapter improved, the best adapter's folder."""


class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def restore_dir(self) -> Path | None: ...

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None, improved: bool) -> None: ...


def print_reporter(metrics: dict[str, float], best_dir: Path | None) -> None:
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "trainable_params")
    print(f"[eval] {shown}{'  *best' if best_dir else ''}", flush=True)


class LocalSession:
    """One process: copies each improved adapter to `<output_dir>/best` and calls `reporter`."""

    rank = 0
    world_size = 1

    def __init__(self, output_dir: Path, device: torch.device, reporter: Reporter = print_reporter) -> None:
        self.best_dir = output_dir / "best"
        self.device = device
        self.reporter = reporter

    def restore_dir(self) -> Path | None:
        return None

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None, improved: bool) -> None:
        if improved and checkpoint_dir is not None:
            copy_adapter(checkpoint_dir, self.best_dir)
        self.reporter(metrics, self.best_dir if improved else None)


# ----- collectives (identity on one process) -----------------------------------------------------------------
def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not distributed():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather(obj: Any) -> list[Any]:
    if not distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum every rank's gradients of `params` in one collective (a parameter without a gradient counts as
    zero: a workload's step need not touch every parameter on every rank)."""
    if not distributed() or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    for param, chunk in zip(params, flat.split([p.numel() for p in params])):
        param.grad = chunk.view_as(param).to(param.dtype)


def broadcast_parameters(params: list[torch.nn.Parameter]) -> None:
    if distributed():
        for param in params:
            dist.broadcast(param.data, src=0)
