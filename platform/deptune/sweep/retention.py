"""Which checkpoints of a Tune-actor trial stay, and when the others go.

Tune's own retention (`CheckpointConfig.num_to_keep`) deletes a checkpoint the moment a newer one is
registered, while the experiment state that `--resume` restores from is saved every few seconds: a driver
killed between the two leaves a saved state that restores its trials from a checkpoint that no longer
exists, and Tune fails them (issue 22). Here Tune keeps every checkpoint and this callback deletes, in the
driver, those that are neither a trial's latest nor one of its `keep` latest improvements of the best
adapter (the best adapter is the latest improvement) — but only `$DEPTUNE_CHECKPOINT_GRACE_S` after a newer
checkpoint of the trial superseded it, when every state saved since names the newer one. Once an
execution has finished (not stopped: `--resume` would restore from its saved state), `clean_up` leaves
each trial folder its newest checkpoint and its best adapter's, whatever earlier, killed drivers left.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from ray import tune

from deptune.storage import Folder
from deptune.sweep.trainable import TRIAL_FOLDER_PREFIX
from deptune.train.config import IMPROVED_AT

log = logging.getLogger(__name__)
GRACE_ENV = "DEPTUNE_CHECKPOINT_GRACE_S"
"""How long a superseded checkpoint stays (default 60 s: many of Tune's state snapshots, every 2 s)."""


def grace_seconds() -> float:
    return float(os.environ.get(GRACE_ENV, "60"))


@dataclass
class _Kept:
    checkpoint: tune.Checkpoint
    improved: bool
    superseded_at: float | None = None


@dataclass
class CheckpointRetention(tune.Callback):
    keep: int  # improvements of the best adapter kept (`train.keep_checkpoints`), besides the latest
    grace_s: float = field(default_factory=grace_seconds)
    trials: dict[str, list[_Kept]] = field(default_factory=dict)

    def on_checkpoint(self, iteration: int, trials: list, trial, checkpoint, **info) -> None:
        kept = self.trials.setdefault(trial.trial_id, [])
        if kept:
            kept[-1].superseded_at = time.monotonic()
        kept.append(_Kept(checkpoint, bool((trial.last_result or {}).get(IMPROVED_AT))))

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self._delete(time.monotonic() - self.grace_s)

    def _delete(self, superseded_before: float) -> None:
        for kept in self.trials.values():
            improvements = [k for k in kept if k.improved][-self.keep :]
            for k in list(kept):
                if k is kept[-1] or k in improvements or k.superseded_at is None or k.superseded_at > superseded_before:
                    continue
                try:
                    k.checkpoint.filesystem.delete_dir(k.checkpoint.path)
                except FileNotFoundError:
                    pass
                except OSError as exc:  # the storage is away: tried again at a later step
                    log.debug("checkpoint %s not deleted yet: %s", k.checkpoint.path, exc)
                    continue
                kept.remove(k)


def clean_up(experiment: str, best: set[str]) -> None:
    """A finished execution's trial folders: each keeps its newest checkpoint and its best adapter's (`best`:
    the study's adapter paths)."""
    folder = Folder(experiment)
    kept = {tuple(uri.rstrip("/").rsplit("/", 2)[-2:]) for uri in best}  # (trial folder, checkpoint)
    for trial in (name for name in folder.folders() if name.startswith(TRIAL_FOLDER_PREFIX)):
        names = sorted(n for n in folder.child(trial).folders() if n.startswith("checkpoint_"))
        for name in names[:-1]:
            if (trial, name) not in kept:
                folder.child(trial).remove(name)
