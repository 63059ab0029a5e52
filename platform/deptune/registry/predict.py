"""`deptune predict`: a registered adapter on many rows in one process, the model loaded once.

Rows come from one option per text column (`--input sentence1=... --input sentence2=...`, or `--text` for
a one-column task), or from a CSV/TSV/JSONL file whose columns are the task's. Every missing column is
named with the task's columns before the model loads; predictions carry the task's class names.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


class InputError(ValueError):
    """Rows that do not fit the model's input columns (the message says which and what it takes)."""


@dataclass
class Predictor:
    """A loaded pyfunc and the text columns it takes (its signature's inputs)."""

    model: object
    columns: list[str]

    @classmethod
    def load(cls, model_uri: str, tracking_uri: str | None = None) -> Predictor:
        import mlflow
        import mlflow.pyfunc

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        model = mlflow.pyfunc.load_model(model_uri)
        return cls(model, list(model.metadata.get_input_schema().input_names()))

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        """The rows with `label` (the verbalised label) and `label_name` (the task's class name) added."""
        check_columns(rows, self.columns)
        out = self.model.predict(rows[self.columns].astype(str))
        result = rows.reset_index(drop=True).copy()
        result["label"] = list(out["label"])
        result["label_name"] = list(out["label_name"]) if "label_name" in out else result["label"]
        return result


STORE_SCHEMES = ("models:", "runs:", "mlflow-artifacts:")
"""Model URIs that MLflow resolves through a tracking store (anything else is a model folder)."""


def needs_store(model_uri: str) -> bool:
    return model_uri.startswith(STORE_SCHEMES)


def model_columns(model_uri: str, tracking_uri: str | None = None) -> list[str]:
    """The model's input columns, from its MLmodel alone (rows are checked before the model loads)."""
    import mlflow
    from mlflow.models import get_model_info

    if not needs_store(model_uri) and not (Path(model_uri) / "MLmodel").is_file():
        raise InputError(
            f"{model_uri}: no model there (a models:/NAME/VERSION, models:/NAME@ALIAS, runs:/ URI, "
            f"or a folder holding an MLmodel file)"
        )
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return list(get_model_info(model_uri).signature.inputs.input_names())


def check_columns(rows: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise InputError(
            f"missing input column(s) {', '.join(missing)}: this model's task takes "
            f"{', '.join(columns)} (give each as --input COLUMN=TEXT, or a --file with these columns)"
        )
    if rows.empty:
        raise InputError(f"no rows to predict: give --input COLUMN=TEXT for {', '.join(columns)}, or a --file")


def rows_from_options(columns: Sequence[str], texts: Sequence[str], inputs: Sequence[str]) -> pd.DataFrame:
    """Rows from the command line: `--input column=text`, repeated per column (repeat a column for more rows,
    the n-th values of each column make row n); `--text` is the first column's."""
    values: dict[str, list[str]] = {}
    for item in inputs:
        if "=" not in item:
            raise InputError(f"--input {item!r}: write COLUMN=TEXT, COLUMN one of {', '.join(columns)}")
        column, text = item.split("=", 1)
        if column not in columns:
            raise InputError(f"--input {column}=...: no such column; this model's task takes {', '.join(columns)}")
        values.setdefault(column, []).append(text)
    if texts:
        values.setdefault(columns[0], []).extend(texts)
    lengths = {c: len(v) for c, v in values.items()}
    if len(set(lengths.values())) > 1:
        raise InputError(
            "every column needs the same number of values: " + ", ".join(f"{c} has {n}" for c, n in lengths.items())
        )
    frame = pd.DataFrame(values)
    check_columns(frame, columns)
    return frame


def rows_from_file(path: Path) -> pd.DataFrame:
    """Rows from a .csv, .tsv or .jsonl/.json file (every value read as text); a file that is empty, not
    UTF-8 or not parseable is an `InputError` naming it (and the line, where known)."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl", ".json"):
        raise InputError(f"--file {path}: expected .csv, .tsv or .jsonl")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InputError(
            f"--file {path}:{line}: byte 0x{raw[exc.start]:02x} is not UTF-8; save the file as UTF-8"
        ) from None
    if not text.strip():
        raise InputError(f"--file {path}: empty; give a header line (the task's columns) and rows")
    try:
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(
                io.StringIO(text), sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False
            )
        if suffix == ".jsonl":
            _check_json_lines(path, text)
        return pd.read_json(io.StringIO(text), lines=suffix == ".jsonl", dtype=str)
    except InputError:
        raise
    except ValueError as exc:  # pandas' parser errors are ValueErrors
        raise InputError(f"--file {path}: {str(exc).splitlines()[0]}") from None


def _check_json_lines(path: Path, text: str) -> None:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"--file {path}:{number}: not JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise InputError(f"--file {path}:{number}: a JSON {type(row).__name__}, not an object of columns")
