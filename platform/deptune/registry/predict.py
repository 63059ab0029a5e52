"""`deptune predict`: a registered adapter on many rows in one process, the model loaded once.

Rows come from one option per text column (`--input sentence1=... --input sentence2=...`, or `--text` for
a one-column task), or from a CSV/TSV/JSONL file whose columns are the task's. Every missing column is
named with the task's columns before the model loads; predictions carry the task's class names.
"""

from __future__ import annotations

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


def model_columns(model_uri: str, tracking_uri: str | None = None) -> list[str]:
    """The model's input columns, from its MLmodel alone (rows are checked before the model loads)."""
    import mlflow
    from mlflow.models import get_model_info
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return list(get_model_info(model_uri).signature.inputs.input_names())


def check_columns(rows: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise InputError(f"missing input column(s) {', '.join(missing)}: this model's task takes "
                         f"{', '.join(columns)} (give each as --input COLUMN=TEXT, or a --file with these columns)")
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
        raise InputError("every column needs the same number of values: "
                         + ", ".join(f"{c} has {n}" for c, n in lengths.items()))
    frame = pd.DataFrame(values)
    check_columns(frame, columns)
    return frame


def rows_from_file(path: Path) -> pd.DataFrame:
    """Rows from a .csv, .tsv or .jsonl/.json file (every value read as text)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    if suffix == ".tsv":
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=suffix == ".jsonl", dtype=str)
    raise InputError(f"--file {path}: expected .csv, .tsv or .jsonl")
