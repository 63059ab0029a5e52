"""Load a task's data (hub, GLUE TSV folder, local files or the built-in task) into train/validation/test.

Every source first yields the task's *official* splits as rows with the hub's column names, so one
formatter serves all sources; `make_splits` then applies DePT's split rule (see `deptune.tasks.glue`)
with its exact shuffle (`torch.randperm` seeded with `split_seed`), so the halves and hold-outs are the
very examples the paper used. `max_train_samples`/`max_eval_samples` truncate each split afterwards as
DePT's `n_obs` does: the first n of an already shuffled split, else n drawn by the same seeded shuffle.
Splitting and truncation count rows, as DePT does before it formats: a ReCoRD row with three answers
stays three examples on the same side. `task.few_shot` then draws the few-shot training set.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deptune.tasks.base import Example, TaskSplits
from deptune.tasks.config import FewShotConfig, TaskConfig
from deptune.tasks.glue import TASKS, TextTask
from deptune.tasks.qa import QA_TASKS, QATask
from deptune.tasks.synthetic import SYNTHETIC_TASKS

Row = Mapping[str, Any]
Official = Mapping[str, tuple[str, Sequence[Row]]]  # role -> (where the rows came from, rows)
LARGE_VALIDATION_SIZE = 1000  # DePT: "1K examples from the training set as validation"
BenchmarkTask = TextTask | QATask
BENCHMARK: dict[str, BenchmarkTask] = {t.name: t for t in (*TASKS, *QA_TASKS)}


@dataclass(frozen=True)
class GlueLayout:
    """A task's files in GLUE's own download: header (None: the file has one) and hub field -> column."""

    columns: Mapping[str, str]
    header: tuple[str, ...] | None = None


GLUE_LAYOUTS: dict[str, GlueLayout] = {
    "cola": GlueLayout(
        {"sentence": "sentence", "label": "label"}, header=("source", "label", "original_mark", "sentence")
    ),
    "sst2": GlueLayout({"sentence": "sentence", "label": "label"}),
    "mrpc": GlueLayout({"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"}),
    "qqp": GlueLayout({"question1": "question1", "question2": "question2", "label": "is_duplicate"}),
    "stsb": GlueLayout({"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"}),
    "mnli": GlueLayout({"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"}),
    "qnli": GlueLayout({"question": "question", "sentence": "sentence", "label": "label"}),
    "rte": GlueLayout({"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}),
}
GLUE_FILES = {
    "train": "train.tsv",
    "validation": "dev.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}


def load_splits(cfg: TaskConfig) -> TaskSplits:
    """The task's train/validation/test examples from the configured source; fails before any training."""
    source = cfg.resolved_source
    if (cfg.name in _SYNTHETIC) != (source == "builtin"):
        raise ValueError(
            f"task {cfg.name!r} cannot use source {source!r}: the built-in source serves "
            f"only the synthetic tasks ({', '.join(_SYNTHETIC)}), which have no other source"
        )
    if source == "builtin":
        splits = _builtin_splits(cfg)
    else:
        task = benchmark_task(cfg.name)
        readers = {"hub": _hub_rows, "glue_dir": _glue_dir_rows, "files": _files_rows}
        splits = make_splits(task, readers[source](cfg, task), cfg)
    if cfg.few_shot is None:
        return splits
    task = _SYNTHETIC.get(cfg.name) or BENCHMARK[cfg.name]
    draw = few_shot_total if cfg.few_shot.per == "total" else few_shot_per_class
    return TaskSplits(train=draw(splits.train, cfg.few_shot, task), validation=splits.validation, test=splits.test)


def few_shot_class(task: Any, example: Example) -> str:
    """The class a few-shot draw balances: the label; STS-B's score binned at 2.5 as the official code does."""
    if task.is_regression:
        return "0" if float(example.target) <= 2.5 else "1"
    return example.target


def few_shot_total(train: Sequence[Example], cfg: FewShotConfig, task: Any) -> list[Example]:
    """The official DePT train.py draw of `k_shot_example` (train.py lines 530-546): walk the train split in the
    order of `datasets.Dataset.shuffle(seed)` (numpy's `default_rng(seed).permutation`), take an example if its
    class has fewer than k // n_classes or if exactly k - 1 are taken (slot k, open to any class); stop at k.
    Where k % n_classes >= 2 slot k is never reached: the draw stops at k // n_classes * n_classes (30 for CB at
    k = 32), as the official code trains. `exact_k` opens the last k % n_classes slots instead, so the draw is
    the official one plus the next examples of the shuffle, exactly k. Extractive QA has no classes: the first
    k of the shuffle. Fewer examples than the draw's count is an error."""
    import numpy as np  # deferred, as torch below

    order = np.random.default_rng(cfg.seed).permutation(len(train)).tolist()
    if not task.label_names and not task.is_regression:
        chosen, count = order[: cfg.k], cfg.k
    else:
        n_classes = 2 if task.is_regression else len(task.label_names)
        chosen = _balanced_draw([few_shot_class(task, train[i]) for i in order], cfg, n_classes)
        chosen = [order[j] for j in chosen]
        count = cfg.k if cfg.exact_k else official_k_shot_count(cfg.k, n_classes)
        if count == 0:
            raise ValueError(
                f"task.few_shot.k: the official draw of k = {cfg.k} over {n_classes} classes takes no "
                "example (k // n_classes is 0 and slot k never opens); raise k or set exact_k: true"
            )
    if len(chosen) < count:
        drawn = "" if count == cfg.k else f" (the official draw: {count})"
        raise ValueError(
            f"task.few_shot.k: {cfg.k} examples in all{drawn}, but the train split yields only {len(chosen)}"
        )
    return [train[i] for i in chosen]


def official_k_shot_count(k: int, n_classes: int) -> int:
    """How many examples the official loop draws from enough data: k, unless k % n_classes >= 2, where slot k
    (open once k - 1 are taken) is never reached and every class stops at k // n_classes."""
    return k if k % n_classes <= 1 else k // n_classes * n_classes


def _balanced_draw(labels: Sequence[str], cfg: FewShotConfig, n_classes: int) -> list[int]:
    """Indices into `labels` (the shuffled order) the loop takes: a class while it has fewer than k // n_classes;
    any class once `open_from` are taken (official: k - 1; exact_k: from k // n_classes * n_classes on)."""
    per_class = cfg.k // n_classes
    open_from = min(cfg.k - 1, per_class * n_classes) if cfg.exact_k else cfg.k - 1
    counts: dict[str, int] = {}
    chosen: list[int] = []
    for j, label in enumerate(labels):
        if len(chosen) == cfg.k:
            break
        if counts.get(label, 0) < per_class or len(chosen) >= open_from:
            counts[label] = counts.get(label, 0) + 1
            chosen.append(j)
    return chosen


def few_shot_per_class(train: Sequence[Example], cfg: FewShotConfig, task: Any) -> list[Example]:
    """k examples of every class, drawn by the seeded torch shuffle, in a shuffled order; too few is an error."""
    if not task.label_names and not task.is_regression:
        raise ValueError(f"task.few_shot.per: {task.name} has no classes; use per: total")
    by_class: dict[str, list[Example]] = {}
    for i in permutation(len(train), cfg.seed):
        by_class.setdefault(few_shot_class(task, train[i]), []).append(train[i])
    short = {label: len(rows) for label, rows in by_class.items() if len(rows) < cfg.k}
    if short:
        raise ValueError(f"task.few_shot.k: {cfg.k} examples per class, but the train split has only {short}")
    chosen = [e for label in sorted(by_class) for e in by_class[label][: cfg.k]]
    return [chosen[i] for i in permutation(len(chosen), cfg.seed)]


def benchmark_task(name: str) -> BenchmarkTask:
    if name not in BENCHMARK:
        raise ValueError(f"unknown task {name!r}; valid tasks: synthetic, {', '.join(BENCHMARK)}")
    return BENCHMARK[name]


_SYNTHETIC = {t.name: t for t in SYNTHETIC_TASKS}


def _builtin_splits(cfg: TaskConfig) -> TaskSplits:
    splits = _SYNTHETIC[cfg.name].splits(cfg.synthetic_size, cfg.split_seed)
    return TaskSplits(
        train=splits.train[: cfg.max_train_samples],
        validation=splits.validation[: cfg.max_eval_samples],
        test=splits.test[: cfg.max_eval_samples],
    )


# --- splitting ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    """A split: the rows' examples in `order` (None: the official split as given, in file order)."""

    rows: list[list[Example]]  # one list per row (ReCoRD: an example per answer)
    order: list[int] | None = None

    def take(self, n: int | None, seed: int) -> list[Example]:
        """The examples of the first n rows of the order (DePT's `n_obs` counts rows)."""
        order = self.order
        if order is None and n is not None:
            order = permutation(len(self.rows), seed)
        rows = self.rows if order is None else [self.rows[i] for i in order[:n]]
        return [e for row in rows for e in row]


def permutation(n: int, seed: int) -> list[int]:
    """DePT's shuffle (`AbstractTask.shuffled_indices`), so splits match the paper's example for example."""
    import torch  # deferred: only splitting needs it, and `deptune validate` should stay light

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def make_splits(task: BenchmarkTask, official: Official, cfg: TaskConfig) -> TaskSplits:
    """Format the official splits, apply the task's split rule, then the sample limits."""
    if "validation" not in official:
        raise ValueError(f"{task.name}: no validation data (give task.files.validation)")
    formatted = {role: format_row_groups(task, rows, where) for role, (where, rows) in official.items()}
    parts = _partition(task, formatted, cfg.split_seed, cfg.validation_split == "whole")
    return TaskSplits(
        train=parts["train"].take(cfg.max_train_samples, cfg.split_seed),
        validation=parts["validation"].take(cfg.max_eval_samples, cfg.split_seed),
        test=parts["test"].take(cfg.max_eval_samples, cfg.split_seed),
    )


def _partition(
    task: BenchmarkTask, splits: Mapping[str, list[list[Example]]], seed: int, whole_validation: bool = False
) -> dict[str, _Part]:
    train, validation = splits["train"], splits["validation"]
    if whole_validation:  # `task.validation_split: whole`: the files as given, no test split made up
        return {"train": _Part(train), "validation": _Part(validation), "test": _Part(splits.get("test", []))}
    if "test" in splits:  # a labelled test set (MNLI's matched dev set, or files with test:) as given
        return {"train": _Part(train), "validation": _Part(validation), "test": _Part(splits["test"])}
    if task.split_rule == "small":
        order, half = permutation(len(validation), seed), len(validation) // 2
        return {
            "train": _Part(train),
            "validation": _Part(validation, order[:half]),
            "test": _Part(validation, order[half:]),
        }
    if task.split_rule == "large":
        if len(train) <= LARGE_VALIDATION_SIZE:
            raise ValueError(
                f"{task.name} holds {LARGE_VALIDATION_SIZE} training examples out as validation "
                f"(DePT's rule for large tasks), but train has only {len(train)}"
            )
        order = permutation(len(train), seed)
        return {
            "train": _Part(train, order[LARGE_VALIDATION_SIZE:]),
            "validation": _Part(train, order[:LARGE_VALIDATION_SIZE]),
            "test": _Part(validation),
        }
    raise ValueError(
        f"{task.name} needs a labelled test split besides validation "
        f"(official: {', '.join(task.official_splits.values())})"
    )


def format_row_groups(task: BenchmarkTask, rows: Sequence[Row], where: str) -> list[list[Example]]:
    """The examples of each row (one, or ReCoRD's one per answer), row by row."""
    groups = []
    for i, row in enumerate(rows):
        try:
            groups.append(task.format_all(row))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}, row {i}: {err}") from err
    return groups


# --- sources -----------------------------------------------------------------------------------------


def _hub_rows(cfg: TaskConfig, task: BenchmarkTask) -> Official:
    import datasets  # deferred: heavy, and only this source needs it

    dataset_id = cfg.hub_id or task.hub[0]
    loaded = datasets.load_dataset(dataset_id, task.hub[1])
    return hub_official(task, loaded, f"{dataset_id}/{task.hub[1]}")


def hub_official(task: BenchmarkTask, loaded: Mapping[str, Sequence[Row]], name: str) -> Official:
    """The official splits of a loaded `DatasetDict` (or any mapping of split name -> rows)."""
    missing = [s for s in task.official_splits.values() if s not in loaded]
    if missing:
        raise ValueError(f"{name} has no split(s) {', '.join(missing)}; it has {', '.join(loaded)}")
    return {role: (f"{name}:{split}", loaded[split]) for role, split in task.official_splits.items()}


def _glue_dir_rows(cfg: TaskConfig, task: BenchmarkTask) -> Official:
    if task.name not in GLUE_LAYOUTS:
        raise ValueError(
            f"task.data_dir reads GLUE's TSV layout, which has no {task.name!r}; use source 'hub' or 'files'"
        )
    if cfg.data_dir is None:
        raise ValueError("source 'glue_dir' needs task.data_dir")
    layout = GLUE_LAYOUTS[task.name]
    official = {}
    for role, split in task.official_splits.items():
        path = cfg.data_dir / GLUE_FILES[split]
        columns, rows = read_table(path, header=layout.header)
        _check_columns(path, task, columns, layout.columns)
        renamed = (_rename(row, layout.columns) for row in rows)
        # Lines with missing fields are dropped, as the hub's GLUE builder did (a few exist in QQP).
        official[role] = (str(path), [r for r in renamed if all(v is not None for v in r.values())])
    return official


def _files_rows(cfg: TaskConfig, task: BenchmarkTask) -> Official:
    if cfg.files is None:
        raise ValueError("source 'files' needs task.files")
    unknown = sorted(set(cfg.columns) - set(task.fields))
    if unknown:
        raise ValueError(
            f"task.columns maps unknown field(s) {', '.join(unknown)}; {task.name} reads {', '.join(task.fields)}"
        )
    mapping = {f: cfg.columns.get(f, f) for f in task.fields}
    official = {}
    for role in ("train", "validation", "test"):
        path = getattr(cfg.files, role)
        if path is not None:
            columns, rows = read_table(path)
            _check_columns(path, task, columns, mapping)
            official[role] = (str(path), [_rename(row, mapping) for row in rows])
    return official


def _rename(row: Row, mapping: Mapping[str, str]) -> dict[str, Any]:
    return {name: row.get(column) for name, column in mapping.items()}


def _check_columns(path: Path, task: BenchmarkTask, present: Sequence[str], mapping: Mapping[str, str]) -> None:
    missing = [
        f"{column!r}" + (f" (task field {name!r})" if column != name else "")
        for name, column in mapping.items()
        if column not in present
    ]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)} for task {task.name}; "
            f"the file has columns {', '.join(map(repr, present))}. "
            "Map task fields to file columns with task.columns."
        )


def read_table(path: Path, header: Sequence[str] | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of a CSV, TSV or JSONL file, picked by suffix.

    TSVs are read with quoting off (GLUE's contain stray quotes) and a UTF-8 BOM is skipped (MRPC);
    `header` names the columns of a file without a header line (CoLA).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8-sig", newline="") as f:
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in f if line.strip()]
            return list(dict.fromkeys(k for row in rows for k in row)), rows
        if suffix not in (".csv", ".tsv"):
            raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")
        dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
        reader = csv.DictReader(f, fieldnames=header, **dialect)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def dataset_fingerprint(cfg: TaskConfig) -> str:
    """A short hash of what a run trains and scores on: the task settings plus the bytes of local data
    files (hub data is named by its id; its revision is pinned by the hub's own cache)."""
    import hashlib

    digest = hashlib.sha256(cfg.model_dump_json(exclude={"data_dir", "files"}).encode())
    paths = (
        sorted(Path(cfg.data_dir).glob("*.tsv"))
        if cfg.data_dir
        else [p for p in (cfg.files.model_dump().values() if cfg.files else ()) if p is not None]
    )
    for path in paths:
        digest.update(Path(path).name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


# --- checks before any training (deptune validate) ---------------------------------------------------------


def data_errors(cfg: TaskConfig) -> list[str]:
    """What `load_splits` would fail on, found by reading only file headers: 'key.path: message' lines
    relative to the task section (the caller prefixes `task.`)."""
    source = cfg.resolved_source
    if (cfg.name in _SYNTHETIC) != (source == "builtin"):
        return [
            f"source: task {cfg.name!r} cannot use source {source!r}: the built-in source serves only the "
            f"synthetic tasks ({', '.join(_SYNTHETIC)}), which have no other source"
        ]
    if source in ("builtin", "hub"):
        return []  # hub data is fetched (or found in the cache) when the run starts
    task = benchmark_task(cfg.name)
    return _glue_dir_errors(cfg, task) if source == "glue_dir" else _files_errors(cfg, task)


def _glue_dir_errors(cfg: TaskConfig, task: BenchmarkTask) -> list[str]:
    if cfg.data_dir is None:
        return ["data_dir: source 'glue_dir' needs task.data_dir"]
    if not Path(cfg.data_dir).is_dir():
        return [f"data_dir: no such folder: {cfg.data_dir}"]
    if task.name not in GLUE_LAYOUTS:
        return [f"data_dir: GLUE's TSV layout has no {task.name!r}; use task.source 'hub' or 'files'"]
    layout, errors = GLUE_LAYOUTS[task.name], []
    for split in task.official_splits.values():
        path = Path(cfg.data_dir) / GLUE_FILES[split]
        if not path.is_file():
            errors.append(f"data_dir: {path} is missing (the {split} split of {task.name})")
        elif layout.header is None:
            errors += [f"data_dir: {e}" for e in _header_errors(path, task, layout.columns)]
    return errors


def _files_errors(cfg: TaskConfig, task: BenchmarkTask) -> list[str]:
    if cfg.files is None:
        return ["files: source 'files' needs task.files (train and validation)"]
    unknown = sorted(set(cfg.columns) - set(task.fields))
    if unknown:
        return [f"columns: maps unknown field(s) {', '.join(unknown)}; {task.name} reads {', '.join(task.fields)}"]
    mapping = {f: cfg.columns.get(f, f) for f in task.fields}
    errors = []
    if cfg.files.validation is None:
        errors.append(
            f"files.validation: required: {task.name} selects its best step on a validation file "
            f"(give the task's dev/validation file)"
        )
    if task.split_rule == "given" and cfg.files.test is None:
        errors.append(
            f"files.test: required: {task.name} tests on its own labelled split ({task.official_splits.get('test')})"
        )
    for split in ("train", "validation", "test"):
        path = getattr(cfg.files, split)
        if path is None:
            continue
        if not Path(path).is_file():
            errors.append(f"files.{split}: no such file: {path}")
        else:
            errors += [f"files.{split}: {e}" for e in _header_errors(Path(path), task, mapping)]
    return errors


def _header_errors(path: Path, task: BenchmarkTask, mapping: Mapping[str, str]) -> list[str]:
    """The columns the first line of a file names, against the task's fields (mapped by task.columns)."""
    try:
        present = read_header(path)
    except (ValueError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"{path}: unreadable: {exc}"]
    missing = [
        f"{column!r}" + (f" (task field {name!r})" if column != name else "")
        for name, column in mapping.items()
        if column not in present
    ]
    if not missing:
        return []
    return [
        f"{path} lacks column(s) {', '.join(missing)} for task {task.name}; it has "
        f"{', '.join(map(repr, present)) or 'none'} (map task fields to columns with task.columns)"
    ]


def read_header(path: Path) -> list[str]:
    """The column names of a CSV/TSV header line, or the keys of a JSONL file's first row."""
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8-sig", newline="") as f:
        if suffix == ".jsonl":
            first = next((line for line in f if line.strip()), "{}")
            row = json.loads(first)
            return list(row) if isinstance(row, dict) else []
        if suffix not in (".csv", ".tsv"):
            raise ValueError(f"unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")
        dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
        return next(csv.reader(f, **dialect), [])
