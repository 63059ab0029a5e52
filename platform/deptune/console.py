"""What a person sees while a run goes: deptune's own lines on the terminal, everything else in a log file.

`ExecutionOutput` sends Ray's, Tune's and MLflow's output (this process's stdout and stderr, down to the
file descriptors, and so the Ray processes it starts) to the execution's log file and hands back a console
on the real terminal; `--verbose` leaves their output where it was. `SweepView` hears the sweep's trial
events (`sweep.progress`) and deptune's warnings: on a terminal, one table updated in place (rich `Live`)
with a line above it for each event that matters; elsewhere (a `ray job submit` log, CI) the same as plain
lines, one per trial event, with no escape codes."""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from deptune.sweep.progress import TrialEvent
from deptune.train.config import IMPROVED_AT

SHORT_NAMES = {"prompt_length": "m", "rank": "r"}
WIDE = 160  # columns when the output is not a terminal (rich would wrap at 80)


def log_path(output_dir: Path | str, command: str, name: str) -> Path:
    """`<output_dir>/logs/<command>-<name>-<time>.log`; a run whose output goes to a store logs under ./logs."""
    folder = Path(output_dir) if "://" not in str(output_dir) else Path.cwd()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return (folder / "logs" / f"{command}-{name}-{stamp}.log").absolute()


class ExecutionOutput:
    """A console on the terminal, while everything else this process (and what it starts) writes goes to the
    execution's log. Until `keep()` (the run goes ahead: nothing refused it) that is an unnamed temporary file,
    so a refused spec leaves no log behind; `keep()` writes it to `log` and goes on there. `verbose`: nothing
    is redirected."""

    FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

    def __init__(self, log: Path, verbose: bool = False) -> None:
        self.log, self.verbose, self.kept = log, verbose, False

    def __enter__(self) -> Console:
        if self.verbose:
            return _console(sys.stdout)
        self.terminal, self.owned = _terminal_stream(sys.stdout)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self.saved_fds, self.streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
        self.records = logging.StreamHandler()  # deptune's own records, with their time and origin
        self.records.setFormatter(logging.Formatter(self.FORMAT))
        deptune = logging.getLogger("deptune")
        self.level = deptune.level
        deptune.addHandler(self.records)
        deptune.setLevel(min(self.level or logging.INFO, logging.INFO))
        self.current: IO[str] = tempfile.TemporaryFile("w+", buffering=1, encoding="utf-8")
        self._point_at(self.current)
        return _console(self.terminal)

    def keep(self) -> None:
        """From now on the output goes to `log` (appended), with what was written before."""
        if self.verbose or self.kept:
            return
        self.log.parent.mkdir(parents=True, exist_ok=True)
        kept = open(self.log, "a", buffering=1, encoding="utf-8")  # closed by __exit__
        self.current.flush()
        os.lseek(self.current.fileno(), 0, os.SEEK_SET)
        while chunk := os.read(self.current.fileno(), 1 << 16):
            os.write(kept.fileno(), chunk)
        self._point_at(kept)
        self.current.close()
        self.current, self.kept = kept, True

    def __exit__(self, *exc: object) -> None:
        if self.verbose:
            return
        deptune = logging.getLogger("deptune")
        deptune.removeHandler(self.records)
        deptune.setLevel(self.level)
        self.current.flush()
        sys.stdout, sys.stderr = self.streams
        os.dup2(self.saved_fds[0], 1)
        os.dup2(self.saved_fds[1], 2)
        for fd in self.saved_fds:
            os.close(fd)
        self.current.close()
        self.terminal.flush()
        if self.owned:
            self.terminal.close()

    def _point_at(self, target: IO[str]) -> None:
        os.dup2(target.fileno(), 1)
        os.dup2(target.fileno(), 2)
        sys.stdout = sys.stderr = target
        self.records.setStream(target)


def _terminal_stream(stdout: IO[str]) -> tuple[IO[str], bool]:
    """Where the terminal is once fd 1 goes to the log: a copy of fd 1 for a real stdout, else the stream
    itself (a test's captured output). Returns (stream, whether we opened it)."""
    try:
        fd = stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return stdout, False
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(stdout, "encoding", None) or "utf-8"), True


def _console(stream: IO[str]) -> Console:
    console = Console(file=stream, highlight=False)
    return console if console.is_terminal else Console(file=stream, highlight=False, width=WIDE)


@dataclass
class _Row:
    number: int
    params: dict[str, Any]
    state: str = "running"
    step: int | None = None
    objective: float | None = None
    best: float | None = None
    cpu_seconds: float | None = None
    gpu_seconds: float | None = None


class SweepView:
    """The sweep as it goes: a `sweep.progress` listener; deptune's warnings are lines above the table."""

    def __init__(self, console: Console, trials: int, total_steps: int, mode: str, live: bool | None = None) -> None:
        self.console, self.trials, self.total_steps, self.mode = console, trials, total_steps, mode
        self.live = console.is_terminal if live is None else live
        self.rows: dict[int, _Row] = {}
        self.started = time.monotonic()
        self.lock = threading.RLock()
        self._live: Live | None = None

    # ----- lifetime ------------------------------------------------------------------------------------------
    def __enter__(self) -> SweepView:
        self._warnings = warnings_on(self.console)
        self._warnings.__enter__()
        if self.live:
            self._live = Live(
                console=self.console,
                refresh_per_second=4,
                get_renderable=self.render,
                redirect_stdout=False,  # what others print goes to the log, not above the table
                redirect_stderr=False,
            )
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()  # the last table stays on the screen
        self._warnings.__exit__(None, None, None)

    # ----- what it hears ------------------------------------------------------------------------------------
    def __call__(self, event: TrialEvent) -> None:
        with self.lock:
            row = self.rows.setdefault(event.number, _Row(event.number, event.params))
            row.params = event.params or row.params
            if event.step is not None:
                row.step = event.step
            if event.objective is not None:
                row.objective = event.objective
                row.best = _better(row.best, event.objective, self.mode)
            if event.best is not None:
                row.best = _better(row.best, event.best, self.mode)
            row.cpu_seconds = event.cpu_seconds if event.cpu_seconds is not None else row.cpu_seconds
            row.gpu_seconds = event.gpu_seconds if event.gpu_seconds is not None else row.gpu_seconds
            row.state = {"started": "running", "evaluated": "running"}.get(event.kind, event.kind)
            line = self.line(event, row)
        if line is not None:
            self.say(line)

    def say(self, line: str) -> None:
        """One line above the live table (or on its own in plain output)."""
        self.console.print(Text(line), soft_wrap=True)

    # ----- lines --------------------------------------------------------------------------------------------
    def line(self, event: TrialEvent, row: _Row) -> str | None:
        """The event's line; on a terminal only those the table cannot show (a failure, a resume)."""
        n = f"trial {event.number}"
        if event.kind == "started":
            if event.resumed_at is not None:
                return f"{n} started again (it had reported step {event.resumed_at}; it goes on from its checkpoint)"
            return None if self.live else f"{n} started: {_params(row.params)}"
        if event.kind == "failed":
            at = f" at step {row.step}/{self.total_steps}" if row.step else ""
            return f"{n} failed{at}: {event.reason}"
        if event.kind in ("finished", "stopped") and not self.live:
            ended = (
                "finished"
                if event.kind == "finished"
                else f"stopped by the scheduler at step {row.step}/{self.total_steps}"
            )
            return (
                f"{n} {ended}: objective {_fmt(row.objective)}, best {_fmt(row.best)}, "
                f"{_secs(row.cpu_seconds)} CPU-s" + (f", {_secs(row.gpu_seconds)} GPU-s" if row.gpu_seconds else "")
            )
        return None

    # ----- the table ------------------------------------------------------------------------------------------
    def render(self) -> Group:
        with self.lock:
            rows = sorted(self.rows.values(), key=lambda r: r.number)
            names = _ordered(k for r in rows for k in r.params)
            gpus = any(r.gpu_seconds for r in rows)
            table = Table(box=None, pad_edge=False, header_style="bold")
            for column in ("#", "state", *(SHORT_NAMES.get(k, k) for k in names), "step", "objective", "best"):
                table.add_column(column, justify="left" if column == "state" else "right")
            table.add_column("CPU-s", justify="right")
            if gpus:
                table.add_column("GPU-s", justify="right")
            leader = self.leader()
            for r in rows:
                table.add_row(
                    str(r.number),
                    r.state,
                    *(_fmt(r.params.get(k)) for k in names),
                    f"{r.step or 0}/{self.total_steps}",
                    _fmt(r.objective),
                    _fmt(r.best),
                    _secs(r.cpu_seconds),
                    *([_secs(r.gpu_seconds)] if gpus else []),
                    style="bold green" if leader is not None and r.number == leader.number else None,
                )
            return Group(table, Text(self.summary()))

    def leader(self) -> _Row | None:
        scored = [r for r in self.rows.values() if r.best is not None and r.state != "failed"]
        if not scored:
            return None
        return (max if self.mode == "max" else min)(scored, key=lambda r: r.best)

    def summary(self) -> str:
        """Best so far, counts, elapsed and what is left (at the steps per second seen so far)."""
        with self.lock:
            counts = {s: sum(r.state == s for r in self.rows.values()) for s in ("finished", "stopped", "failed")}
            running = sum(r.state == "running" for r in self.rows.values())
            leader = self.leader()
            elapsed = time.monotonic() - self.started
            done_steps = sum(r.step or 0 for r in self.rows.values())
            left_steps = sum(self.total_steps - (r.step or 0) for r in self.rows.values() if r.state == "running")
            left_steps += max(0, self.trials - len(self.rows)) * self.total_steps
        best = f"best: trial {leader.number} {_fmt(leader.best)}" if leader else "best: -"
        left = f", about {_clock(left_steps * elapsed / done_steps)} left" if done_steps and left_steps else ""
        return (
            f"{best} · {counts['finished']} finished, {counts['stopped']} stopped, {counts['failed']} failed, "
            f"{running} running of {self.trials} · {_clock(elapsed)} elapsed{left}"
        )


def _better(current: float | None, value: float, mode: str) -> float:
    if current is None or math.isnan(current):
        return value
    return max(current, value) if mode == "max" else min(current, value)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{SHORT_NAMES.get(k, k)}={_fmt(params[k])}" for k in _ordered(params))


def _ordered(names: Any) -> list[str]:
    """m and r first, then the rest as the plan names them."""
    names = list(dict.fromkeys(names))
    return [k for k in SHORT_NAMES if k in names] + [k for k in names if k not in SHORT_NAMES]


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TrainView:
    """`deptune train` / `mpt-source` as they go: one line per evaluation. A run in this process calls `report`;
    for runs on Ray, the JSON lines their controllers append to `reports.jsonl` under `folder` (an MPT
    stage's teachers' too) are followed from where they stood when the view opened."""

    def __init__(self, console: Console, total_steps: int, folder: Path | None = None) -> None:
        self.console, self.total_steps, self.folder = console, total_steps, folder
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._offsets = {path: path.stat().st_size for path in self._report_files()}

    def __enter__(self) -> TrainView:
        self._warnings = warnings_on(self.console)
        self._warnings.__enter__()
        if self.folder is not None:
            self._thread = threading.Thread(target=self._follow, name="deptune-train-view", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._read_new()  # what the last report wrote after the last look
        self._warnings.__exit__(None, None, None)

    def report(self, metrics: dict[str, float], best_dir: Path | None = None, run: str = "") -> None:
        """The evaluation's line: which run (an MPT teacher), where it is, the objective, the training loss."""
        label = f"{run}: " if run else f"teacher {int(metrics['teacher'])}: " if "teacher" in metrics else ""
        total = "" if label else f"/{self.total_steps}"  # a teacher's steps are its own
        parts = [f"{label}step {int(metrics.get('step', 0))}{total}"]
        for key in ("objective", "best_objective", "train_loss"):
            if isinstance(metrics.get(key), (int, float)):
                parts.append(f"{key.replace('_', ' ')} {_fmt(float(metrics[key]))}")
        improved = best_dir is not None or bool(metrics.get(IMPROVED_AT))  # a Ray run's report says it itself
        self.console.print(Text(", ".join(parts) + ("  (best so far)" if improved else "")), soft_wrap=True)

    def _report_files(self) -> list[Path]:
        return sorted(self.folder.rglob("reports.jsonl")) if self.folder is not None and self.folder.is_dir() else []

    def _follow(self) -> None:
        while not self._stop.wait(0.5):
            self._read_new()

    def _read_new(self) -> None:
        import json

        for path in self._report_files():
            offset = self._offsets.get(path, 0)
            if path.stat().st_size < offset:  # a fresh run replaced the file
                offset = 0
            run = "" if path.parent == self.folder else str(path.parent.relative_to(self.folder))
            with path.open("rb") as lines:
                lines.seek(offset)
                for line in iter(lines.readline, b""):
                    if not line.endswith(b"\n"):
                        break  # a line still being written: read it whole next time
                    offset += len(line)
                    try:
                        self.report(json.loads(line), run=run)
                    except ValueError:
                        continue
            self._offsets[path] = offset


@contextmanager
def warnings_on(console: Console) -> Iterator[None]:
    """deptune's warnings (this process's; a trial's reach the log file) as lines on the console."""
    handler = _ConsoleLines(console)
    logging.getLogger("deptune").addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger("deptune").removeHandler(handler)


class _ConsoleLines(logging.Handler):
    def __init__(self, console: Console) -> None:
        super().__init__(level=logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(Text(f"{record.levelname.lower()}: {record.getMessage()}"), soft_wrap=True)
        except Exception:  # noqa: BLE001 (logging's way: a handler never raises into the code that logged)
            self.handleError(record)
