"""`deptune predict` on a pair task (RTE, from the GLUE fixture) with a tiny BERT trained in this process:
one option per text column or a file of rows, class names in the output, a missing column named with the
task's columns, no transformers load report about the head, and a pyfunc saved from code (no pickle)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from deptune.cli import app
from deptune.registry.predict import InputError, rows_from_options
from deptune.registry.pyfunc import save_pyfunc
from deptune.specs import parse_spec
from deptune.train.loop import train
from deptune.train.spec import RunSpec

FIXTURES = Path(__file__).parent / "fixtures" / "glue"
PAIRS = [("A man is playing a guitar.", "A man plays music."), ("The cat sleeps.", "A dog is barking loudly.")]


@pytest.fixture(scope="module")
def rte_model(tmp_path_factory) -> Path:
    """A tiny BERT + DePT adapter trained for a few steps on the RTE fixture, saved as the registry saves it."""
    tmp = tmp_path_factory.mktemp("rte")
    spec = parse_spec(
        {
            "backbone": {"name": "tiny-bert", "tiny": {"hidden_size": 32, "max_positions": 64}},
            "task": {"name": "rte", "data_dir": str(FIXTURES / "RTE")},
            "method": {"name": "dept", "prompt_length": 4, "rank": 2, "max_length": 48},
            "train": {
                "steps": 2,
                "batch_size": 2,
                "eval_every": 2,
                "warmup_steps": 0,
                "output_dir": str(tmp / "run"),
                "evaluate_test": False,
            },
        },
        kind=RunSpec,
    )
    result = train(spec)
    spec_file = tmp / "run_spec.json"
    spec_file.write_text(spec.model_dump_json())
    return save_pyfunc(
        tmp / "model",
        Path(result.adapter_dir),
        spec_file,
        {"sentence1": ["an example sentence1"], "sentence2": ["an example sentence2"]},
    )


def predict(*args: str) -> subprocess.CompletedProcess:
    """`deptune predict` in a process of its own, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "deptune.cli", "predict", *args], capture_output=True, text=True, timeout=300
    )


def predict_here(*args: str) -> subprocess.CompletedProcess:
    """The same command in this process (no second start-up of torch and MLflow), with the same result."""
    result = CliRunner().invoke(app, ["predict", *args])
    return subprocess.CompletedProcess(["predict", *args], result.exit_code, result.stdout, result.stderr)


def test_the_model_is_saved_from_code_with_safetensors_and_no_pickle(rte_model):
    files = [p.relative_to(rte_model).as_posix() for p in rte_model.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    assert any(f.endswith("adapter_model.safetensors") for f in files)
    assert "model_code.py" in {Path(f).name for f in files}
    assert "model_code_path" in (rte_model / "MLmodel").read_text()


@pytest.mark.slow  # a `deptune predict` process, importing torch and MLflow
def test_pair_rows_from_options_and_from_a_file_give_the_same_class_names(rte_model, tmp_path):
    options = [arg for a, b in PAIRS for arg in ("--input", f"sentence1={a}", "--input", f"sentence2={b}")]
    by_option = predict(str(rte_model), *options)
    assert by_option.returncode == 0, by_option.stderr
    lines = [line.split("\t") for line in by_option.stdout.strip().splitlines()]
    assert len(lines) == 2 and [tuple(line[2:]) for line in lines] == PAIRS
    assert {line[0] for line in lines} <= {"entailment", "not_entailment"} and {line[1] for line in lines} <= {"0", "1"}
    assert [line[0] for line in lines] == [("entailment", "not_entailment")[int(line[1])] for line in lines]
    assert "MISSING" not in by_option.stderr and "newly initialized" not in by_option.stderr

    rows = tmp_path / "rows.csv"
    pd.DataFrame(PAIRS, columns=["sentence1", "sentence2"]).to_csv(rows, index=False)
    by_csv = predict_here(str(rte_model), "--file", str(rows))
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps({"sentence1": a, "sentence2": b}) + "\n" for a, b in PAIRS))
    by_jsonl = predict_here(str(rte_model), "--file", str(jsonl))
    assert by_csv.returncode == 0 and by_jsonl.returncode == 0, by_csv.stderr + by_jsonl.stderr
    assert by_csv.stdout == by_option.stdout == by_jsonl.stdout


def test_a_missing_column_is_named_with_the_tasks_columns(rte_model):
    missing = predict_here(str(rte_model), "--input", "sentence1=only the first")
    assert missing.returncode == 2
    assert "missing input column(s) sentence2: this model's task takes sentence1, sentence2" in missing.stderr
    unknown = predict_here(str(rte_model), "--input", "premise=x")
    assert unknown.returncode == 2 and "no such column; this model's task takes sentence1, sentence2" in unknown.stderr


def test_rows_from_options_pair_the_nth_values():
    frame = rows_from_options(
        ["sentence1", "sentence2"], [], ["sentence1=a", "sentence2=b", "sentence1=c", "sentence2=d"]
    )
    assert frame.to_dict("records") == [{"sentence1": "a", "sentence2": "b"}, {"sentence1": "c", "sentence2": "d"}]
    assert list(rows_from_options(["sentence"], ["x", "y"], [])["sentence"]) == ["x", "y"]
    with pytest.raises(InputError, match="sentence1 has 2, sentence2 has 1"):
        rows_from_options(["sentence1", "sentence2"], [], ["sentence1=a", "sentence1=c", "sentence2=b"])
