"""What a person sees: deptune's lines on the console, everything else in the execution's log file; a live
table on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from rich.console import Console

from deptune.console import SweepView, TrainView
from deptune.sweep.progress import TrialEvent
from deptune.train.config import IMPROVED_AT
from stores import mlflow_store

PARAMS = {"prompt_length": 8, "lr_prompt": 0.0123456, "lr_lowrank": 0.00145, "rank": 5}
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=160, force_terminal=False), out


def events() -> list[TrialEvent]:
    common = {"params": PARAMS, "total_steps": 160}
    return [
        TrialEvent("started", 0, **common),
        TrialEvent("started", 1, **common),
        TrialEvent("evaluated", 0, step=20, objective=0.61, best=0.61, cpu_seconds=1.04, **common),
        TrialEvent("evaluated", 0, step=40, objective=0.55, best=0.61, cpu_seconds=2.0, **common),
        TrialEvent("stopped", 0, step=40, objective=0.55, best=0.61, cpu_seconds=2.06, **common),
        TrialEvent("evaluated", 1, step=160, objective=0.9, best=0.92, cpu_seconds=7.0, gpu_seconds=3.5, **common),
        TrialEvent("finished", 1, step=160, objective=0.9, best=0.92, cpu_seconds=7.04, gpu_seconds=3.5, **common),
        TrialEvent("started", 2, resumed_at=None, **common),
        TrialEvent("failed", 2, reason="ValueError: bad batch", **common),
        TrialEvent("started", 1, resumed_at=120, **common),
    ]


def test_plain_output_is_one_line_per_trial_event_with_its_outcome():
    console, out = plain_console()
    view = SweepView(console, trials=4, total_steps=160, mode="max", live=False)
    with view:
        for event in events():
            view(event)
    assert out.getvalue().splitlines() == [
        "trial 0 started: m=8 r=5 lr_prompt=0.01235 lr_lowrank=0.00145",
        "trial 1 started: m=8 r=5 lr_prompt=0.01235 lr_lowrank=0.00145",
        "trial 0 stopped by the scheduler at step 40/160: objective 0.55, best 0.61, 2.1 CPU-s",
        "trial 1 finished: objective 0.9, best 0.92, 7.0 CPU-s, 3.5 GPU-s",
        "trial 2 started: m=8 r=5 lr_prompt=0.01235 lr_lowrank=0.00145",
        "trial 2 failed: ValueError: bad batch",
        "trial 1 started again (it had reported step 120; it goes on from its checkpoint)",
    ]
    assert not ESCAPE.search(out.getvalue())
    assert [view.rows[n].state for n in (0, 1, 2)] == ["stopped", "running", "failed"]
    assert view.leader().number == 1 and view.leader().best == 0.92


def test_the_live_table_shows_every_trial_the_best_and_what_is_left():
    out = io.StringIO()
    console = Console(file=out, width=140, force_terminal=True, color_system="standard")
    view = SweepView(console, trials=4, total_steps=160, mode="max")
    assert view.live
    with view:
        for event in events()[:7]:
            view(event)
    text = ESCAPE.sub("", out.getvalue())
    assert "\x1b[" in out.getvalue()  # drawn in place on a terminal
    table = text[text.rindex("#  state") :].splitlines()
    assert re.split(r"\s+", table[0].strip()) == [
        "#",
        "state",
        "m",
        "r",
        "lr_prompt",
        "lr_lowrank",
        "step",
        "objective",
        "best",
        "CPU-s",
        "GPU-s",
    ]
    assert re.split(r"\s+", table[1].strip()) == ["0", "stopped", "8", "5", "0.01235", "0.00145", "40/160"] + [
        "0.55",
        "0.61",
        "2.1",
        "-",
    ]
    assert re.split(r"\s+", table[2].strip())[:7] == ["1", "finished", "8", "5", "0.01235", "0.00145", "160/160"]
    summary = table[3]
    assert summary.startswith("best: trial 1 0.92 · 1 finished, 1 stopped, 0 failed, 0 running of 4 · ")
    assert re.search(r"about \d+:\d\d left$", summary), summary  # 2 trials not started yet: 320 steps left
    assert "trial 0 started" not in text  # on a terminal the table says it; lines are for what it cannot


def test_deptune_warnings_are_lines_on_the_console():
    import logging

    console, out = plain_console()
    with SweepView(console, trials=1, total_steps=10, mode="min", live=False):
        logging.getLogger("deptune.sweep.tracker").warning("MLflow at %s unreachable", "http://127.0.0.1:1")
        logging.getLogger("ray.tune").warning("not ours")
    logging.getLogger("deptune.sweep.tracker").warning("after the view")
    assert out.getvalue().splitlines() == ["warning: MLflow at http://127.0.0.1:1 unreachable"]


def test_train_view_follows_each_report_file_from_where_it_stood(tmp_path):
    console, out = plain_console()
    main = tmp_path / "reports.jsonl"
    main.write_text(json.dumps({"step": 10, "objective": 0.1}) + "\n")  # an earlier run's: not shown
    with TrainView(console, total_steps=40, folder=tmp_path) as view:
        with main.open("a") as f:
            f.write(
                json.dumps({"step": 20, "objective": 0.5, "best_objective": 0.5, "train_loss": 0.693, IMPROVED_AT: 20})
            )
            f.write("\n")
        teacher = tmp_path / "teachers" / "sst2" / "reports.jsonl"
        teacher.parent.mkdir(parents=True)
        teacher.write_text(json.dumps({"step": 5, "objective": 0.7}) + "\n" + '{"step": 6')  # the last half-written
        time.sleep(1.2)
        view.report({"step": 40.0, "objective": 0.75, "best_objective": 0.75}, best_dir=tmp_path)
    assert out.getvalue().splitlines() == [
        "step 20/40, objective 0.5, best objective 0.5, train loss 0.693  (best so far)",
        "teachers/sst2: step 5, objective 0.7",
        "step 40/40, objective 0.75, best objective 0.75  (best so far)",
    ]


SCRIPT = textwrap.dedent(
    """
    import logging, os, subprocess, sys
    from pathlib import Path
    from deptune.console import ExecutionOutput, warnings_on

    output = ExecutionOutput(Path(sys.argv[1]))
    with output as console:
        print("before the log is kept")
        assert not Path(sys.argv[1]).exists()
        output.keep()
        with warnings_on(console):
            console.print("ours")
            print("printed by a library")
            os.write(1, b"written to fd 1\\n")
            os.write(2, b"written to fd 2\\n")
            logging.getLogger("ray").warning("ray says")
            logging.getLogger("deptune.sweep").warning("deptune warns")
            logging.getLogger("deptune.sweep").info("deptune informs")
            subprocess.run(["echo", "a child process"], check=True)
    print("after")
    """
)


def test_execution_output_sends_all_but_deptune_lines_to_the_log(tmp_path):
    """Nothing is written at the log's path until the run is kept (a refused spec leaves no file); then what was
    written before is in it, and everything after, down to a child process's file descriptors."""
    log = tmp_path / "logs" / "sweep.log"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ours", "warning: deptune warns", "after"]
    assert done.stderr == ""
    logged = log.read_text()
    for line in (
        "before the log is kept",
        "printed by a library",
        "written to fd 1",
        "written to fd 2",
        "ray says",
        "a child process",
    ):
        assert line in logged, logged
    assert re.search(r"\d\d:\d\d:\d\d,\d+ WARNING deptune.sweep: deptune warns", logged), logged
    assert re.search(r"INFO deptune.sweep: deptune informs", logged), logged


@pytest.mark.slow
def test_a_sweep_on_a_terminal_draws_its_live_table_and_logs_the_rest(tmp_path):
    """The demo's spec, shortened, under a pseudo-terminal: the table is drawn in place and ends with every
    trial's state; Ray's and Tune's output is in the log file the console names, not on the terminal."""
    sets = [
        "sweep.trials=3",
        "train.steps=60",
        "train.eval_every=20",
        "sweep.scheduler.grace_period=20",
        f"train.output_dir={tmp_path / 'out'}",
    ]
    sets += ["study.storage=" + f"sqlite:///{tmp_path / 'study.db'}", f"tracking.uri={mlflow_store(tmp_path, 'ml.db')}"]
    command = [sys.executable, "-m", "deptune.cli", "sweep", "search_spaces/demo.yaml"]
    command += [arg for s in sets for arg in ("--set", s)]
    main, child = pty.openpty()
    env = {**os.environ, "RAY_ADDRESS": "", "COLUMNS": "150", "LINES": "40", "TERM": "xterm"}
    proc = subprocess.Popen(command, stdout=child, stderr=child, env=env, cwd=Path(__file__).parents[1])
    os.close(child)
    chunks = []
    while True:
        ready, _, _ = select.select([main], [], [], 1.0)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=300)
    os.close(main)
    raw = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, ESCAPE.sub("", raw)[-3000:]
    text = ESCAPE.sub("", raw)
    assert raw.count("\x1b[2K") > 3  # redrawn in place
    last = text[text.rindex("#  state") :]
    rows = [line.split() for line in last.splitlines()[1:4]]
    assert [row[0] for row in rows] == ["0", "1", "2"] and all(row[1] in ("finished", "stopped") for row in rows)
    assert re.search(r"best: trial \d .*, 0 running of 3", last)
    assert "Trial status" not in text and "(train_trial pid=" not in text and "WARNING" not in text
    log = Path(re.search(r"log: (\S+\.log)", text).group(1))
    logged = log.read_text()
    assert "Trial status" in logged or "Trial train_trial" in logged  # Tune's own output, kept in the log
