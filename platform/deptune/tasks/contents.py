"""Reading a task's local data whole before any Ray work: every row the run will read, read as the run reads
it (`loading.read_table`'s dialects) and checked as the task formats it, so what would fail mid-run fails here,
naming the file and the line: a label outside the task's set, a row short of fields, a bad JSONL line, a
byte that is not UTF-8, a file with no rows, a validation file DePT's split cannot halve, a large task's
train file too small to hold 1,000 rows out, a few-shot k larger than the train split.

Torch-free unless asked (`shuffles=True`, a run about to start): which rows a seeded torch shuffle leaves in
the train split (a large task's hold-out, `max_train_samples`) decides a few-shot draw, and without torch
that is bounded from both sides instead (sure to fail: an error; not sure to pass: a warning).
Extractive QA rows are checked for their fields and answers only: formatting them (T5's punctuation
padding of every context) would cost seconds on SQuAD.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deptune.tasks.base import Example
from deptune.tasks.config import FewShotConfig, TaskConfig
from deptune.tasks.loading import (
    GLUE_FILES,
    GLUE_LAYOUTS,
    LARGE_VALIDATION_SIZE,
    BenchmarkTask,
    benchmark_task,
    few_shot_class,
    few_shot_per_class,
    few_shot_total,
    make_splits,
)
from deptune.tasks.qa import QATask, answer_texts
from deptune.tasks.synthetic import SYNTHETIC_TASKS

ROW_ERRORS_SHOWN = 5
"""Row errors listed per file; the rest are counted (a file of bad labels is one problem, not 60,000)."""


@dataclass
class ReadFile:
    """One data file as the run reads it: its rows (line number, task field -> value), what was wrong."""

    key: str  # the spec key that names it: files.train, data_dir
    path: Path
    role: str  # train, validation, test
    rows: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)  # one per example (ReCoRD: one per answer)
    errors: list[str] = field(default_factory=list)
    bad_rows: int = 0
    dropped: list[int] = field(default_factory=list)  # GLUE's loader drops rows short of fields

    def row_error(self, line: int, message: str) -> None:
        self.bad_rows += 1
        if self.bad_rows <= ROW_ERRORS_SHOWN:
            self.errors.append(f"{self.key}: {self.path}:{line}: {message}")


@dataclass
class Findings:
    """'key.path: message' lines relative to the task section: errors, and warnings (what the run will do
    that the user may not expect, or what could not be checked here)."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def content_findings(cfg: TaskConfig, shuffles: bool = False) -> Findings:
    """Read the task's local data whole (its headers already checked by `loading.data_errors`); `shuffles`:
    torch may be imported to settle what a seeded shuffle decides."""
    source = cfg.resolved_source
    if source == "builtin":
        return _few_shot_on_builtin(cfg)
    if source not in ("files", "glue_dir"):
        return Findings()  # hub data is fetched (or found in the cache) when the run starts
    task = benchmark_task(cfg.name)
    files = [_read(task, *spec) for spec in _file_specs(cfg, task)]
    findings = Findings(errors=[e for f in files for e in f.errors] + [m for f in files if (m := _more(f))])
    findings.warnings += [_dropped_warning(f) for f in files if f.dropped and f.rows]
    if findings.errors:
        return findings
    by_role = {f.role: f for f in files}
    findings.errors += _split_errors(cfg, task, by_role)
    if cfg.few_shot is not None and not findings.errors:
        _few_shot(cfg, task, by_role, shuffles, findings)
    return findings


def _more(read: ReadFile) -> str | None:
    hidden = read.bad_rows - ROW_ERRORS_SHOWN
    return f"{read.key}: {read.path}: {hidden:,} more row(s) like these" if hidden > 0 else None


def _dropped_warning(read: ReadFile) -> str:
    more = ", ..." if len(read.dropped) > ROW_ERRORS_SHOWN else ""
    lines = ", ".join(map(str, read.dropped[:ROW_ERRORS_SHOWN])) + more
    return (
        f"{read.key}: {read.path}: {len(read.dropped):,} line(s) short of fields (line {lines}) are dropped, as "
        f"GLUE's own loader drops them"
    )


# --- which files, read how ------------------------------------------------------------------------------


def _file_specs(
    cfg: TaskConfig, task: BenchmarkTask
) -> Iterator[tuple[str, Path, str, dict[str, str], Sequence[str] | None, bool]]:
    """(spec key, path, role, task field -> column, header of a headerless file, drop short rows) per file."""
    if cfg.resolved_source == "glue_dir":
        layout = GLUE_LAYOUTS[task.name]
        for role, split in task.official_splits.items():
            yield "data_dir", Path(cfg.data_dir) / GLUE_FILES[split], role, dict(layout.columns), layout.header, True
        return
    mapping = {f: cfg.columns.get(f, f) for f in task.fields}
    for role in ("train", "validation", "test"):
        if (path := getattr(cfg.files, role)) is not None:
            yield f"files.{role}", Path(path), role, mapping, None, False


def _read(
    task: BenchmarkTask,
    key: str,
    path: Path,
    role: str,
    mapping: dict[str, str],
    header: Sequence[str] | None,
    drop_short: bool,
) -> ReadFile:
    read = ReadFile(key, path, role)
    try:
        text = _text(path)
    except _NotUTF8 as exc:
        read.errors.append(f"{key}: {path}:{exc.line}: byte 0x{exc.byte:02x} is not UTF-8; save the file as UTF-8")
        return read
    except OSError as exc:
        read.errors.append(f"{key}: {path}: cannot be read ({exc.strerror or type(exc).__name__})")
        return read
    jsonl = path.suffix.lower() == ".jsonl"
    records = _jsonl_records(text, mapping, read) if jsonl else _table_records(text, path, header, mapping, read)
    targets = _Targets(task)
    for line, row, short in records:
        if short:  # csv.DictReader's None for a field the line lacks
            if drop_short:
                read.dropped.append(line)
            else:
                lacking = ", ".join(repr(mapping[name]) for name, value in row.items() if value is None)
                read.row_error(line, f"{short}; no value for {lacking}")
            continue
        try:
            read.targets += targets(row)
        except (ValueError, TypeError) as exc:
            read.row_error(line, str(exc))
            continue
        read.rows.append((line, row))
    if not read.rows and not read.errors:
        read.errors.append(_empty(read, task, header))
    return read


class _Targets:
    """A row's targets (one per example) as the task's `format_all` makes them, or its error. A plain
    classification or regression row is checked as `TextTask.format` checks it (every field there, the label
    verbalised), each distinct label verbalised once: 60,000 rows take a fraction of a second. Rows of
    tasks with a `prepare` step are formatted whole; extractive QA rows are checked for their fields and
    answers only (padding every context's punctuation would cost seconds on SQuAD)."""

    def __init__(self, task: BenchmarkTask) -> None:
        self.task, self.labels = task, {}

    def __call__(self, row: Mapping[str, Any]) -> list[str]:
        task = self.task
        if isinstance(task, QATask) or getattr(task, "prepare", None) is not None:
            return _qa_targets(task, row) if isinstance(task, QATask) else [e.target for e in task.format_all(row)]
        if None in row.values():
            raise ValueError(f"{task.name}: row lacks field(s) {', '.join(f for f, v in row.items() if v is None)}")
        label = row["label"]
        key = (type(label), label) if isinstance(label, (str, int, float, bool)) else None  # 1, 1.0 and true differ
        if key is None:
            return [task.verbalise(label)]
        if (found := self.labels.get(key)) is None:
            try:
                found = self.labels[key] = task.verbalise(label)
            except (ValueError, TypeError) as exc:
                found = self.labels[key] = exc
        if isinstance(found, Exception):
            raise found
        return [found]


def _qa_targets(task: QATask, row: Mapping[str, Any]) -> list[str]:
    missing = [f for f in task.fields if row.get(f) is None]
    if missing:
        raise ValueError(f"{task.name}: row lacks field(s) {', '.join(missing)}")
    answers = answer_texts(row["answers"])
    if task.name == "squad" and not answers:
        raise ValueError("squad: row has no answer")
    return answers or ["<unk>"]


def _empty(read: ReadFile, task: BenchmarkTask, header: Sequence[str] | None) -> str:
    if read.dropped:
        layout = f"{task.name}'s GLUE files have {len(header)} columns" if header else "the header names more"
        return (
            f"{read.key}: {read.path}: no usable rows: each of its {len(read.dropped):,} line(s) has fewer "
            f"fields than the task reads ({layout}); is this {task.name}'s folder?"
        )
    return f"{read.key}: {read.path}: no data rows (a header only, or empty)"


class _NotUTF8(ValueError):
    def __init__(self, line: int, byte: int) -> None:
        super().__init__(f"line {line}")
        self.line, self.byte = line, byte


def _text(path: Path) -> str:
    """The file's text as `read_table` reads it (UTF-8, a BOM skipped); the first bad byte's line if not."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _NotUTF8(raw.count(b"\n", 0, exc.start) + 1, raw[exc.start]) from None


Record = tuple[int, dict[str, Any], str]  # line, task field -> value, what a short line lacks ("" if whole)


def _jsonl_records(text: str, mapping: Mapping[str, str], read: ReadFile) -> Iterator[Record]:
    for number, line in enumerate(io.StringIO(text, newline=""), start=1):  # the lines `read_table` iterates
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            read.row_error(number, f"not JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(record, dict):
            read.row_error(number, f"a JSON {type(record).__name__}, not an object of columns")
            continue
        yield number, {name: record.get(column) for name, column in mapping.items()}, ""


def _table_records(
    text: str, path: Path, header: Sequence[str] | None, mapping: Mapping[str, str], read: ReadFile
) -> Iterator[Record]:
    """CSV/TSV records as `csv.DictReader` reads them (a field a short line lacks is None)."""
    dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if path.suffix.lower() == ".tsv" else {}
    reader = csv.reader(io.StringIO(text, newline=""), **dialect)
    names = list(header) if header else None
    columns: list[tuple[str, int]] = []
    start = 1
    try:
        for fields in reader:
            line, start = start, reader.line_num + 1
            if names is None:
                names = fields
            elif fields:  # DictReader skips blank lines
                columns = columns or [(name, names.index(column)) for name, column in mapping.items()]
                if len(fields) >= len(names):
                    yield line, {name: fields[i] for name, i in columns}, ""
                else:
                    row = {name: fields[i] if i < len(fields) else None for name, i in columns}
                    whose = "the header names" if header is None else "the layout has"
                    short = f"{len(fields)} field(s) where {whose} {len(names)}"
                    yield line, row, short if None in row.values() else ""
    except csv.Error as exc:
        read.row_error(reader.line_num, f"unreadable {path.suffix.lstrip('.').upper()} ({exc})")


# --- the splits the run makes ---------------------------------------------------------------------------


def _split_errors(cfg: TaskConfig, task: BenchmarkTask, files: Mapping[str, ReadFile]) -> list[str]:
    """DePT's split rule applied to the row counts: every split it makes holds a row."""
    train, validation = files["train"], files.get("validation")
    if validation is None or cfg.validation_split == "whole" or "test" in files:
        return []
    if task.split_rule == "small" and len(validation.rows) < 2:
        return [
            f"{validation.key}: {validation.path}: {len(validation.rows)} row cannot be halved into validation "
            f"and test (DePT's split for small tasks); give at least 2 rows, or task.validation_split: whole "
            f"(no test split)"
        ]
    if task.split_rule == "large" and len(train.rows) <= LARGE_VALIDATION_SIZE:
        return [
            f"{train.key}: {train.path}: {task.name} holds {LARGE_VALIDATION_SIZE:,} training rows out as "
            f"validation (DePT's rule for large tasks), but the file has only {len(train.rows):,}; give more, or "
            f"task.validation_split: whole (the validation file selects, no test split)"
        ]
    return []


def _train_needs_a_shuffle(cfg: TaskConfig, task: BenchmarkTask, train_rows: int, has_test: bool) -> int | None:
    """How many rows of the train file a seeded torch shuffle removes from the train split (None: none, the
    split is the file in its order)."""
    removed = 0
    if task.split_rule == "large" and cfg.validation_split == "paper" and not has_test:
        removed = LARGE_VALIDATION_SIZE
    if cfg.max_train_samples is not None:
        return max(removed, train_rows - cfg.max_train_samples)
    return removed or None


def _few_shot(
    cfg: TaskConfig, task: BenchmarkTask, files: Mapping[str, ReadFile], shuffles: bool, findings: Findings
) -> None:
    train = files["train"]
    removed = _train_needs_a_shuffle(cfg, task, len(train.rows), "test" in files)
    if removed is None:
        findings.errors += _draw_errors(_examples(train), cfg.few_shot, task)
    elif shuffles:
        official = {role: (str(f.path), [row for _, row in f.rows]) for role, f in files.items()}
        findings.errors += _draw_errors(make_splits(task, official, cfg).train, cfg.few_shot, task, torch_ok=True)
    else:
        findings.errors += _bounded_draw(
            Counter(few_shot_class(task, e) for e in _examples(train)), removed, cfg.few_shot, task, findings
        )


def _examples(read: ReadFile) -> list[Example]:
    """The file's examples as far as a few-shot draw looks at them (their targets)."""
    return [Example(source="", target=target) for target in read.targets]


def _draw_errors(train: Sequence[Example], few: FewShotConfig, task: Any, torch_ok: bool = False) -> list[str]:
    """The run's own draw (numpy for per: total; per: class counts, since its order needs torch)."""
    if few.per == "class" and not torch_ok:
        if not task.label_names and not task.is_regression:
            return [f"few_shot.per: {task.name} has no classes; use per: total"]
        counts = Counter(few_shot_class(task, e) for e in train)
        short = {label: n for label, n in sorted(counts.items()) if n < few.k}
        return [f"few_shot.k: {few.k} examples per class, but the train split has only {short}"] if short else []
    draw = few_shot_total if few.per == "total" else few_shot_per_class
    try:
        draw(train, few, task)
    except ValueError as exc:
        return [str(exc).removeprefix("task.")]
    return []


def _bounded_draw(classes: Counter, removed: int, few: FewShotConfig, task: Any, findings: Findings) -> list[str]:
    """Without torch: the draw fails for sure (an error) or may fail (a warning saying sweep/train check it)."""
    total = sum(classes.values())
    if few.per == "class":
        if not task.label_names and not task.is_regression:
            return [f"few_shot.per: {task.name} has no classes; use per: total"]
        short = {label: n for label, n in sorted(classes.items()) if n < few.k}
        if short:
            return [f"few_shot.k: {few.k} examples per class, but the train file has only {short}"]
        sure = all(n - removed >= few.k for n in classes.values())
    else:
        if total - removed < few.k:
            return [
                f"few_shot.k: {few.k} examples in all, but the train split keeps at most "
                f"{max(total - removed, 0):,} of the train file's {total:,}"
            ]
        if task.label_names or task.is_regression:  # the draw takes k // n_classes of each class first
            per_class = few.k // (2 if task.is_regression else len(task.label_names))
            sure = sum(min(max(n - removed, 0), per_class) for n in classes.values()) >= few.k
        else:
            sure = True
    if not sure:
        findings.warnings.append(
            "few_shot.k: whether the train split left after a seeded shuffle holds the draw "
            "depends on that shuffle; `deptune sweep` and `train` check it (validate does not "
            "load torch)"
        )
    return []


def _few_shot_on_builtin(cfg: TaskConfig) -> Findings:
    """The built-in tasks' train split is pure Python: the draw is checked exactly."""
    if cfg.few_shot is None:
        return Findings()
    task = next(t for t in SYNTHETIC_TASKS if t.name == cfg.name)
    train = task.splits(cfg.synthetic_size, cfg.split_seed).train[: cfg.max_train_samples]
    return Findings(errors=_draw_errors(train, cfg.few_shot, task))
