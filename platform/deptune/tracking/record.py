"""What each trial reported, read back from the records its rank 0 wrote, in the trial's own words.

The sweep's searcher (its backfill) and ASHA (its rungs after `--resume`) need every evaluation a trial made,
those Tune never delivered too. They read them here by the names the trial reported (`objective`,
`eval_accuracy`, ...) and the training step, never by the names or steps a tracker stores them under."""

from __future__ import annotations

from deptune.storage import Folder, join
from deptune.tracking.journal import RunJournal
from deptune.tracking.trial import ONCE, RENAMED, SUMMARY_STEP

REPORTED = {stored: reported for reported, stored in RENAMED.items()}
MADE_AT = "timestamp_ms"
"""Each evaluation's time of writing (ms since the epoch), beside its metrics: the order evaluations were made."""


def evaluations(records: str, trial_id: str) -> dict[int, dict[str, float]]:
    """A trial's evaluations by training step (the first write of a step wins), each under the names the
    trial reported, with `MADE_AT`; `records`: the sweep's folder of trial records."""
    journal = RunJournal(join(records, trial_id), "")
    constants = {k: float(v) for k, v in journal.logged_params().items() if k in ONCE}  # reported with each
    return {
        step: {**constants, **{REPORTED.get(name, name): value for name, value in metrics.items()}}
        for step, metrics in journal.logged_metrics().items()
        if step != SUMMARY_STEP
    }


def recorded_trials(records: str) -> list[str]:
    """The trials that wrote a record in `records` (by the id they record under)."""
    return Folder(records).folders()
