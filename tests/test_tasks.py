"""Tasks: DePT's text-to-text formats, metrics, the GLUE/hub/files loaders and DePT's split rules."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from deptune.tasks import metrics
from deptune.tasks.base import Example
from deptune.tasks.catalog import TASK_NAMES, get_task
from deptune.tasks.config import TaskConfig
from deptune.tasks.loading import load_splits, read_table

GLUE = Path(__file__).parent / "fixtures" / "glue"


def randperm(n: int, seed: int = 42) -> list[int]:
    """DePT's shuffle, written out here so the tests pin the exact examples of each split."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


# --- registry ----------------------------------------------------------------------------------------


def test_registry_names_all_tasks_and_rejects_unknown():
    assert TASK_NAMES == (
        "synthetic",
        "synthetic_a",
        "synthetic_b",
        "cola",
        "sst2",
        "mrpc",
        "qqp",
        "stsb",
        "mnli",
        "qnli",
        "rte",
        "boolq",
        "cb",
        "multirc",
        "wic",
        "wsc",
        "squad",
        "record",
    )
    with pytest.raises(ValueError, match="unknown task 'rtee'.*valid tasks: synthetic, synthetic_a"):
        get_task("rtee")


# --- formats -----------------------------------------------------------------------------------------

WSC_ROW = {
    "text": "Mark told Pete many lies about himself, which Pete included in his book. He should have "
    "been more truthful.",
    "span1_index": 0,
    "span1_text": "Mark",
    "span2_index": 13,
    "span2_text": "He",
    "label": 0,
}

FORMATS = [
    ("cola", {"sentence": "They drank the pub.", "label": 0}, "sentence: They drank the pub.", "0"),
    ("sst2", {"sentence": "a gorgeous , witty movie . ", "label": 1}, "sentence: a gorgeous , witty movie . ", "1"),
    (
        "mrpc",
        {"sentence1": "He left .", "sentence2": "He went .", "label": 1},
        "sentence1: He left . sentence2: He went .",
        "1",
    ),
    ("qqp", {"question1": "Why?", "question2": "How?", "label": 0}, "question1: Why? question2: How?", "0"),
    (
        "stsb",
        {"sentence1": "A man.", "sentence2": "A dog.", "label": 4.75},
        "sentence1: A man. sentence2: A dog.",
        "4.8",
    ),
    (
        "mnli",
        {"premise": "It rains.", "hypothesis": "It is dry.", "label": 2},
        "premise: It rains. hypothesis: It is dry.",
        "2",
    ),
    ("qnli", {"question": "Who?", "sentence": "Bob did.", "label": 0}, "question: Who? sentence: Bob did.", "0"),
    (
        "rte",
        {"sentence1": "A b.", "sentence2": "C d.", "label": "not_entailment"},
        "sentence1: A b. sentence2: C d.",
        "1",
    ),
    (
        "boolq",
        {"question": "is it wet", "passage": "Water is wet.", "label": True},
        "question: is it wet passage: Water is wet.",
        "1",
    ),
    ("cb", {"premise": "P.", "hypothesis": "H.", "label": "neutral"}, "premise: P. hypothesis: H.", "2"),
    (
        "multirc",
        {
            "paragraph": "<b>Sent 1: </b>Hi.<br><b>Sent 2: </b>Yo.",
            "question": "Who <b>said</b> hi?",
            "answer": "Bob",
            "label": 1,
        },
        "question: Who said hi? answer: Bob paragraph: Sent 1: Hi. Sent 2: Yo.",
        "1",
    ),
    (
        "wic",
        {"word": "bank", "sentence1": "The river bank.", "sentence2": "The bank loan.", "label": 0},
        "sentence1: The river bank. sentence2: The bank loan. word: bank",
        "0",
    ),
    (
        "wsc",
        WSC_ROW,
        "text: * Mark * told Pete many lies about himself, which Pete included in his book. # He # "
        "should have been more truthful.",
        "0",
    ),
]


@pytest.mark.parametrize(("name", "row", "source", "target"), FORMATS, ids=[f[0] for f in FORMATS])
def test_format_matches_dept(name, row, source, target):
    assert get_task(name).format(row) == Example(source=source, target=target)


# The official code's STS-B target, `str(round_stsb_target(label))` = str(np.round((label * 5) / 5, decimals=1)),
# written out for a table of labels as the hub stores them (float32, which `datasets` yields as a Python float):
# the 0.1 grid (its docstring's "nearest 0.2" is not what it computes), with numpy's rounding of the float32
# value (1.15 is 1.1499999... -> "1.1"; 2.25 is an exact half -> "2.2", to even).
STSB_OFFICIAL = [
    (2.5, "2.5"),
    (3.85, "3.8"),
    (0.1, "0.1"),
    (5.0, "5.0"),
    (0, "0.0"),
    (4.75, "4.8"),
    (2.25, "2.2"),
    (1.15, "1.1"),
    (0.05, "0.1"),
    (3.333, "3.3"),
    (4.666, "4.7"),
    (0.25, "0.2"),
    (3.8, "3.8"),
    (1.4, "1.4"),
    (0.6, "0.6"),
    (2.8, "2.8"),
    (4.2, "4.2"),
    (3.2, "3.2"),
    (0.35, "0.3"),
    (2.45, "2.5"),
    (3.35, "3.3"),
]


@pytest.mark.parametrize(("score", "target"), STSB_OFFICIAL)
def test_stsb_target_equals_the_official_code(score, target):
    row = {"sentence1": "a", "sentence2": "b", "label": score}
    assert get_task("stsb").format(row).target == target
    assert get_task("stsb").format({**row, "label": f"{score:.3f}"}).target == target  # a file's text
    label = float(np.float32(score))  # the hub's value
    assert str(np.round((label * 5) / 5, decimals=1)) == target  # the official expression itself


def test_wsc_span_after_pronoun_and_regex_characters():
    row = {
        "text": "The man (tall) saw him .",
        "span1_index": 5,
        "span1_text": ".",
        "span2_index": 1,
        "span2_text": "man (tall)",
        "label": 1,
    }
    assert get_task("wsc").format(row).source == "text: The # man (tall) # saw him * . *"


@pytest.mark.parametrize(("name", "label"), [("rte", "maybe"), ("cola", -1), ("cb", 3), ("mnli", None)])
def test_bad_label_is_a_clear_error(name, label):
    row = dict(FORMATS[[f[0] for f in FORMATS].index(name)][1], label=label)
    with pytest.raises(ValueError, match=name):
        get_task(name).format(row)


# --- metrics -----------------------------------------------------------------------------------------


def test_accuracy_strips_and_counts_invalid_wrong():
    assert get_task("rte").compute_metrics([" 1 ", "0", "yes", "1"], ["1", "0", "1", "0"]) == {"accuracy": 0.5}


def test_binary_f1_with_invalid_prediction_flipped():
    # "x" (target 1) becomes 0 -> preds 1,1,0,0,0,1: TP=2, FP=1, FN=2 -> P=2/3, R=1/2, F1=4/7.
    preds, targets = ["1", "1", "0", "x", "0", "1"], ["1", "0", "1", "1", "0", "1"]
    for name in ("mrpc", "qqp"):
        result = get_task(name).compute_metrics(preds, targets)
        assert list(result) == ["accuracy", "f1"]
        assert result["accuracy"] == pytest.approx(3 / 6)
        assert result["f1"] == pytest.approx(4 / 7)
    assert get_task("multirc").compute_metrics(preds, targets) == {"f1": pytest.approx(4 / 7)}
    # an invalid prediction for a "0" target is a false positive, so F1 drops
    assert get_task("mrpc").compute_metrics(["1", "?"], ["1", "0"])["f1"] == pytest.approx(2 / 3)


def test_counted_accuracy_and_binary_f1_agree_with_scikit_learn():
    """Accuracy and binary F1 are counted (no scikit-learn import in a trial's worker): the same values as
    scikit-learn's, invalid outputs and degenerate cases (no positive anywhere, all wrong) included."""
    from sklearn.metrics import accuracy_score, f1_score

    rng = random.Random(0)
    for size in [1, 2, 3, 7, 50] * 40:
        targets = [rng.choice("01") for _ in range(size)]
        preds = [rng.choice(["0", "1", "1", "x", ""]) for _ in range(size)]
        for ps in (preds, targets, ["0"] * size, ["?"] * size):
            fixed = [p if p in ("0", "1") else ("0" if t == "1" else "1") for p, t in zip(ps, targets)]
            assert metrics.accuracy(ps, targets, ["0", "1"]) == pytest.approx(accuracy_score(targets, ps))
            expected = f1_score(targets, fixed, pos_label="1", average="binary", zero_division=0.0)
            assert metrics.f1_with_invalid(ps, targets, ["0", "1"]) == pytest.approx(expected), (ps, targets)


def test_matthews_correlation_worked_example():
    cola = get_task("cola")
    targets = ["1", "1", "1", "0", "0", "0"]
    # TP=2, TN=2, FP=1, FN=1: (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3
    assert cola.compute_metrics(["1", "1", "0", "0", "0", "1"], targets) == {
        "matthews_correlation": pytest.approx(1 / 3)
    }
    assert cola.compute_metrics(["1"] * 6, targets)["matthews_correlation"] == 0.0  # undefined -> 0
    with_invalid = cola.compute_metrics(["1", "1", "1", "0", "0", "oops"], targets)["matthews_correlation"]
    assert 0.0 < with_invalid < 1.0  # the one invalid output is wrong; the rest are right


def test_cb_macro_f1_over_three_classes():
    # class 0: F1 1; class 1: P=1/2, R=1/2 -> 1/2; class 2: P=1, R=1/2 -> 2/3; "x" is a miss.
    result = get_task("cb").compute_metrics(["0", "1", "1", "0", "x", "2"], ["0", "1", "2", "0", "1", "2"])
    assert list(result) == ["f1_multiclass", "accuracy"]
    assert result["f1_multiclass"] == pytest.approx((1 + 1 / 2 + 2 / 3) / 3)
    assert result["accuracy"] == pytest.approx(4 / 6)


def test_stsb_correlations_parse_floats_unparsable_as_minus_one():
    result = get_task("stsb").compute_metrics(["1.0", "2.0", "oops"], ["1.0", "2.0", "3.0"])
    expected_pearson = float(np.corrcoef([1, 2, 3], [1, 2, -1])[0, 1])  # = -6 / sqrt(84)
    assert result["pearson"] == pytest.approx(expected_pearson)
    assert result["pearson"] == pytest.approx(-6 / math.sqrt(84))
    assert result["spearmanr"] == pytest.approx(-0.5)  # ranks (1,2,3) vs (2,3,1): 1 - 6*6/(3*8)


def test_stsb_constant_or_nan_prediction_scores_zero_not_nan():
    stsb = get_task("stsb")
    assert stsb.compute_metrics(["2.0"] * 3, ["1.0", "2.0", "3.0"]) == {"pearson": 0.0, "spearmanr": 0.0}
    assert stsb.compute_metrics(["nan", "nan", "inf"], ["1.0", "2.0", "3.0"]) == {"pearson": 0.0, "spearmanr": 0.0}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_perfect_predictions_score_one_as_plain_floats(name):
    task = get_task(name)
    targets = ["1.0", "2.6", "4.2"] if task.is_regression else list(task.label_names) * 2 or ["Denver", "a cat"]
    result = task.compute_metrics(targets, targets)
    assert list(result) == list(task.metric_names)
    assert all(type(v) is float for v in result.values())
    assert result[task.metric_names[0]] == pytest.approx(1.0)


def test_metrics_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="2 predictions for 1 targets"):
        get_task("rte").compute_metrics(["0", "1"], ["0"])


# --- GLUE TSV folders --------------------------------------------------------------------------------


def glue_cfg(name: str, folder: str, **kw) -> TaskConfig:
    return TaskConfig(name=name, data_dir=GLUE / folder, **kw)


def test_read_sst2_tsv_with_header():
    columns, rows = read_table(GLUE / "SST-2" / "train.tsv")
    assert columns == ["sentence", "label"]
    assert len(rows) == 6
    assert [r["label"] for r in rows] == ["0", "0", "1", "0", "1", "0"]
    assert rows[3]["sentence"] == "the movie 's \" charm is all surface "  # stray quote kept literally


def test_sst2_is_large_and_needs_more_than_1000_training_rows():
    with pytest.raises(ValueError, match="sst2 holds 1000 training examples out.*train has only 6"):
        load_splits(glue_cfg("sst2", "SST-2"))


def test_cola_without_header_is_small_task():
    splits = load_splits(glue_cfg("cola", "CoLA"))
    assert glue_cfg("cola", "CoLA").resolved_source == "glue_dir"
    assert len(splits.train) == 5 and len(splits.validation) == 2 and len(splits.test) == 2
    assert splits.train[2] == Example("sentence: They drank the pub.", "0")  # train keeps file order
    assert [e.target for e in splits.train] == ["1", "1", "0", "1", "0"]
    dev = [
        Example("sentence: The sailors rode the breeze clear of the rocks.", "1"),
        Example("sentence: The sailors rode the breeze clear of the the rocks.", "0"),
        Example("sentence: The weights made the rope stretch over the pulley.", "1"),
        Example('sentence: The "weights made the rope stretch.', "0"),
    ]
    order = randperm(4)
    assert splits.validation == [dev[i] for i in order[:2]]
    assert splits.test == [dev[i] for i in order[2:]]


def test_rte_string_labels_map_to_hub_ids_and_dev_is_halved():
    splits = load_splits(glue_cfg("rte", "RTE"))
    assert [e.target for e in splits.train] == ["1", "0", "0", "1"]  # entailment=0, not_entailment=1
    assert splits.train[3].source == (
        'sentence1: Judie Vivian, chief executive at ProMedica, said "it is a '
        "landmark. sentence2: The day is important."
    )
    assert (len(splits.validation), len(splits.test)) == (3, 4)  # 7 // 2 and the rest, as DePT
    dev = [
        Example(f"sentence1: Premise number {i}. sentence2: Hypothesis number {i}.", "0" if i % 3 else "1")
        for i in range(7)
    ]
    order = randperm(7)
    assert splits.validation == [dev[i] for i in order[:3]]
    assert splits.test == [dev[i] for i in order[3:]]
    other_seed = load_splits(glue_cfg("rte", "RTE", split_seed=7))
    assert other_seed.validation == [dev[i] for i in randperm(7, 7)[:3]]


def test_mrpc_with_bom_and_stray_quotes():
    columns, rows = read_table(GLUE / "MRPC" / "dev.tsv")
    assert columns[0] == "Quality"  # the BOM is not part of the first column name
    splits = load_splits(glue_cfg("mrpc", "MRPC"))
    assert len(splits.train) == 4
    assert [e.target for e in splits.train] == ["1", "0", "1", "0"]
    assert splits.train[2].source == (
        "sentence1: He said \"the foodservice pie business doesn 't fit . "
        "sentence2: The foodservice pie business does not fit ."
    )
    assert (len(splits.validation), len(splits.test)) == (2, 3)  # 5 dev rows: no quote swallowed a line
    assert all('sentence2: " Second sentence' in e.source for e in splits.validation + splits.test)


def test_sample_limits_follow_dept_subsampling():
    splits = load_splits(glue_cfg("cola", "CoLA", max_train_samples=3, max_eval_samples=1))
    full = load_splits(glue_cfg("cola", "CoLA"))
    assert splits.train == [full.train[i] for i in randperm(5)[:3]]  # official split: seeded draw
    assert splits.validation == full.validation[:1] and splits.test == full.test[:1]  # already shuffled


def test_mnli_and_stsb_glue_headers(tmp_path):
    mnli_header = (
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
        "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
    )
    for file, tag, label in [
        ("train.tsv", "t", "neutral"),
        ("dev_matched.tsv", "m", "contradiction"),
        ("dev_mismatched.tsv", "x", "entailment"),
    ]:
        write_csv(tmp_path / file, mnli_header, [f"0\t1\t1n\tfiction\t(\t(\t(\t(\t{tag} p .\th .\t{label}\t{label}"])
    splits = load_splits(TaskConfig(name="mnli", data_dir=tmp_path))
    assert splits.train == [Example("premise: t p . hypothesis: h .", "1")]
    assert splits.validation == [Example("premise: x p . hypothesis: h .", "0")]  # mismatched selects
    assert splits.test == [Example("premise: m p . hypothesis: h .", "2")]  # matched reports
    stsb = tmp_path / "stsb"
    stsb.mkdir()
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    for file in ("train.tsv", "dev.tsv"):
        write_csv(
            stsb / file,
            header,
            [f"{i}\tmain-captions\tMSRvid\t2012test\t1\tnone\tnone\tA {i}.\tB.\t3.{i}00" for i in range(4)],
        )
    splits = load_splits(TaskConfig(name="stsb", data_dir=stsb))
    assert [e.target for e in splits.train] == ["3.0", "3.1", "3.2", "3.3"]  # the official code's 0.1 grid


def test_glue_dir_rejects_superglue_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="no 'boolq'"):
        load_splits(TaskConfig(name="boolq", data_dir=tmp_path))
    with pytest.raises(FileNotFoundError, match="train.tsv"):
        load_splits(TaskConfig(name="rte", data_dir=tmp_path))


# --- hub (in memory: no network) ---------------------------------------------------------------------


@pytest.fixture
def fake_hub(monkeypatch):
    calls = []

    def install(splits: dict[str, dict[str, list]]):
        loaded = datasets.DatasetDict({k: datasets.Dataset.from_dict(v) for k, v in splits.items()})

        def load_dataset(path, name=None, **kwargs):
            calls.append((path, name))
            return loaded

        monkeypatch.setattr(datasets, "load_dataset", load_dataset)
        return calls

    return install


def sst2_rows(n: int, offset: int = 0) -> dict[str, list]:
    return {"sentence": [f"s{offset + i}" for i in range(n)], "label": [i % 2 for i in range(n)], "idx": list(range(n))}


def test_hub_large_task_holds_1000_training_rows_out(fake_hub):
    calls = fake_hub({"train": sst2_rows(1200), "validation": sst2_rows(50, 10_000), "test": sst2_rows(9)})
    splits = load_splits(TaskConfig(name="sst2"))
    assert calls == [("nyu-mll/glue", "sst2")]
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (200, 1000, 50)
    order = randperm(1200)
    assert splits.validation[0].source == f"sentence: s{order[0]}"
    assert splits.train[0].source == f"sentence: s{order[1000]}"
    assert {e.source for e in splits.train + splits.validation} == {f"sentence: s{i}" for i in range(1200)}
    assert [e.source for e in splits.test] == [f"sentence: s{10_000 + i}" for i in range(50)]  # official order


def test_hub_small_task_and_hub_id_override(fake_hub):
    rte = {"sentence1": ["a"] * 9, "sentence2": [f"b{i}" for i in range(9)], "label": [0] * 9}
    calls = fake_hub({"train": rte, "validation": rte})
    splits = load_splits(TaskConfig(name="rte", source="hub", hub_id="me/glue-mirror"))
    assert calls == [("me/glue-mirror", "rte")]
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (9, 4, 5)


def test_hub_mnli_selects_on_mismatched_and_tests_on_matched(fake_hub):
    def rows(tag, n):
        return {"premise": [f"{tag}{i}" for i in range(n)], "hypothesis": ["h"] * n, "label": [1] * n}

    fake_hub({"train": rows("t", 3), "validation_matched": rows("m", 2), "validation_mismatched": rows("x", 4)})
    splits = load_splits(TaskConfig(name="mnli"))
    assert [e.source[:11] for e in splits.validation] == [f"premise: x{i}" for i in range(4)]
    assert [e.source[:11] for e in splits.test] == [f"premise: m{i}" for i in range(2)]
    assert len(splits.train) == 3 and splits.train[0].target == "1"


def test_hub_superglue_config_names(fake_hub):
    row = dict(WSC_ROW, idx=0)
    calls = fake_hub({"train": {k: [v] for k, v in row.items()}, "validation": {k: [v] * 2 for k, v in row.items()}})
    splits = load_splits(TaskConfig(name="wsc"))
    assert calls == [("aps/super_glue", "wsc.fixed")]
    assert splits.train[0].source.startswith("text: * Mark * told")


STSB_GRID = [i / 10 for i in range(51)] + [1.15, 0.35, 2.45, 3.35]  # the 0.1 grid, and four float32/64 splits


def test_stsb_targets_from_a_tsv_equal_the_hubs(tmp_path, monkeypatch):
    """The hub's STS-B labels are float32, a TSV's scores text: both give the official code's strings."""
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    for file in ("train.tsv", "dev.tsv"):
        write_csv(
            tmp_path / file,
            header,
            [f"{i}\tg\tf\t2012\t{i}\ts\ts\tA {i}.\tB.\t{v:.3f}" for i, v in enumerate(STSB_GRID)],
        )
    features = datasets.Features(
        {
            "sentence1": datasets.Value("string"),
            "sentence2": datasets.Value("string"),
            "label": datasets.Value("float32"),
            "idx": datasets.Value("int32"),
        }
    )
    rows = {
        "sentence1": [f"A {i}." for i in range(len(STSB_GRID))],
        "sentence2": ["B."] * len(STSB_GRID),
        "label": STSB_GRID,
        "idx": list(range(len(STSB_GRID))),
    }
    hub = datasets.DatasetDict(
        {s: datasets.Dataset.from_dict(rows, features=features) for s in ("train", "validation")}
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, **kw: hub)
    from_hub, from_tsv = load_splits(TaskConfig(name="stsb")), load_splits(TaskConfig(name="stsb", data_dir=tmp_path))
    official = [str(np.round((label * 5) / 5, decimals=1)) for label in hub["train"]["label"]]  # src/tasks.py STSB
    assert [e.target for e in from_tsv.train] == [e.target for e in from_hub.train] == official
    assert from_tsv.validation == from_hub.validation and from_tsv.test == from_hub.test
    assert [official[-4:], official[11]] == [["1.1", "0.3", "2.5", "3.3"], "1.1"]  # float64 would give 1.2 0.4 2.4 3.4


# --- local files -------------------------------------------------------------------------------------


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_files_with_column_mapping_csv_tsv_jsonl(tmp_path):
    train = write_csv(tmp_path / "train.csv", "id,text,label", ['1,"Hello, world.",1', "2,Bad grammar me.,0"])
    validation = write_csv(tmp_path / "dev.tsv", "text\tlabel", ['"quoted\t1', "plain\t0", "x\t1"])
    test = tmp_path / "test.jsonl"
    test.write_text("\n".join(json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(3)) + "\n")
    cfg = TaskConfig(name="cola", files={"train": train, "validation": validation}, columns={"sentence": "text"})
    assert cfg.resolved_source == "files"
    splits = load_splits(cfg)
    assert splits.train == [Example("sentence: Hello, world.", "1"), Example("sentence: Bad grammar me.", "0")]
    assert sorted(e.source for e in splits.validation + splits.test) == [
        'sentence: "quoted',
        "sentence: plain",
        "sentence: x",
    ]
    given = load_splits(cfg.model_copy(update={"files": cfg.files.model_copy(update={"test": test})}))
    assert [e.source for e in given.validation] == ['sentence: "quoted', "sentence: plain", "sentence: x"]
    assert given.test == [Example(f"sentence: t{i}", str(i % 2)) for i in range(3)]  # used as given


def test_files_missing_column_names_file_and_columns(tmp_path):
    train = write_csv(tmp_path / "train.csv", "review,label", ["nice,1"])
    cfg = TaskConfig(name="cola", files={"train": train, "validation": train}, columns={"sentence": "text"})
    with pytest.raises(ValueError) as err:
        load_splits(cfg)
    message = str(err.value)
    assert str(train) in message and "'text' (task field 'sentence')" in message
    assert "'review', 'label'" in message


def test_files_errors_missing_file_unknown_field_bad_label(tmp_path):
    train = write_csv(tmp_path / "train.csv", "sentence,label", ["fine,1", "odd,7"])
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_splits(TaskConfig(name="cola", files={"train": train, "validation": tmp_path / "nope.csv"}))
    with pytest.raises(ValueError, match="unknown field.*sentense"):
        load_splits(
            TaskConfig(name="cola", files={"train": train, "validation": train}, columns={"sentense": "sentence"})
        )
    with pytest.raises(ValueError, match=r"train.csv, row 1: cola: label '7'"):
        load_splits(TaskConfig(name="cola", files={"train": train, "validation": train}))
    with pytest.raises(ValueError, match="no validation data"):  # checked before formatting any row
        load_splits(TaskConfig(name="cola", files={"train": train}))


# --- built-in task -----------------------------------------------------------------------------------


def test_synthetic_splits_are_deterministic_for_a_seed():
    cfg = TaskConfig(name="synthetic", synthetic_size=200)
    first, again = load_splits(cfg), load_splits(cfg)
    assert first == again
    assert (len(first.train), len(first.validation), len(first.test)) == (160, 20, 20)
    assert load_splits(cfg.model_copy(update={"split_seed": 1})).train != first.train
    limited = load_splits(cfg.model_copy(update={"max_train_samples": 10, "max_eval_samples": 5}))
    assert limited.train == first.train[:10] and limited.test == first.test[:5]


def test_synthetic_only_from_builtin_and_builtin_only_synthetic(tmp_path):
    with pytest.raises(ValueError, match="built-in source serves only"):
        load_splits(TaskConfig(name="rte", source="builtin"))
    with pytest.raises(ValueError, match="built-in source serves only"):
        load_splits(TaskConfig(name="synthetic", source="hub"))


# --- the paper's metric beside the selection metric --------------------------------------------------


def test_every_task_names_the_metric_the_papers_table_reports():
    paper = {name: get_task(name).paper_metric for name in TASK_NAMES}
    assert paper["cb"] == "accuracy" and get_task("cb").metric_names[0] == "f1_multiclass"  # selects on F1
    assert paper["cola"] == "matthews_correlation" and paper["stsb"] == "pearson" and paper["multirc"] == "f1"
    assert {paper[t] for t in ("sst2", "mrpc", "qqp", "mnli", "qnli", "rte", "boolq", "wic", "wsc")} == {"accuracy"}
    assert paper["squad"] == "f1" and paper["record"] == "f1"
    assert all(paper[name] in get_task(name).metric_names for name in TASK_NAMES)


# --- few-shot: k in all (DePT/FewGLUE) or k per class ------------------------------------------------


def official_k_shot(targets: list[str], k: int, seed: int, n_classes: int) -> list[int]:
    """The official DePT train.py draw, written out on a real `datasets.Dataset` (its shuffle included)."""
    shuffled = datasets.Dataset.from_dict({"i": list(range(len(targets))), "target": targets}).shuffle(seed=seed)
    counts, per_class, chosen = {}, k // n_classes, []
    for data in shuffled:
        if sum(counts.values()) == k:
            break
        label = data["target"]
        if counts.get(label, 0) < per_class or sum(counts.values()) == k - 1:
            counts[label] = counts.get(label, 0) + 1
            chosen.append(data["i"])
    return chosen


def cb_rows(n: int) -> list[dict]:
    labels = ["entailment", "contradiction", "neutral"]
    return [
        {"premise": f"P {i}.", "hypothesis": f"H {i}.", "label": labels[(i * 7) % 5 % 3], "idx": i} for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cb_files(tmp_path: Path, n_train: int = 60) -> dict:
    return {
        "train": str(write_jsonl(tmp_path / "train.jsonl", cb_rows(n_train))),
        "validation": str(write_jsonl(tmp_path / "val.jsonl", cb_rows(8))),
    }


def cb_shaped_files(tmp_path: Path) -> dict:
    """CB's train split in shape: 250 rows, 119 contradiction, 115 entailment, 16 neutral, in a fixed mixed order."""
    labels = ["contradiction"] * 119 + ["entailment"] * 115 + ["neutral"] * 16
    order = np.random.default_rng(7).permutation(len(labels))
    rows = [{"premise": f"P {i}.", "hypothesis": f"H {i}.", "label": labels[j], "idx": i} for i, j in enumerate(order)]
    return {
        "train": str(write_jsonl(tmp_path / "train.jsonl", rows)),
        "validation": str(write_jsonl(tmp_path / "val.jsonl", cb_rows(8))),
    }


@pytest.mark.parametrize(("k", "count"), [(4, 4), (16, 16), (32, 30)])
def test_total_k_draws_what_the_official_loop_draws(tmp_path, k, count):
    """CB (3 classes): k // 3 of each class, slot k open once k - 1 are taken, so k = 32 stops at 30."""
    files = cb_shaped_files(tmp_path)
    full = load_splits(TaskConfig(name="cb", files=files))
    ids = {e.source: i for i, e in enumerate(full.train)}
    for seed in (0, 42):
        cfg = TaskConfig(name="cb", files=files, few_shot={"k": k, "per": "total", "seed": seed})
        drawn = load_splits(cfg)
        expected = official_k_shot([e.target for e in full.train], k, seed, n_classes=3)
        assert len(drawn.train) == len(expected) == count
        assert [ids[e.source] for e in drawn.train] == expected  # the same example ids, in the same order
        assert load_splits(cfg).train == drawn.train and drawn.validation == full.validation  # reproducible
        counts = sorted(sum(e.target == c for e in drawn.train) for c in ("0", "1", "2"))
        assert counts[0] >= k // 3 and counts[-1] <= k // 3 + 1
        exact = load_splits(cfg.model_copy(update={"few_shot": cfg.few_shot.model_copy(update={"exact_k": True})}))
        assert len(exact.train) == k and exact.train[:count] == drawn.train  # exact_k: the next ones of the shuffle
    assert (
        load_splits(cfg.model_copy(update={"few_shot": cfg.few_shot.model_copy(update={"seed": 1})})).train
        != drawn.train
    )


def test_the_official_k_shot_count_and_its_errors(tmp_path):
    from deptune.tasks.loading import official_k_shot_count

    assert [official_k_shot_count(k, 3) for k in (1, 2, 3, 4, 5, 16, 32, 33, 34)] == [1, 0, 3, 4, 3, 16, 30, 33, 34]
    assert all(official_k_shot_count(k, 2) == k for k in range(1, 40))  # two classes (and STS-B's bins): always k
    files = cb_shaped_files(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"task.few_shot.k: the official draw of k = 2 over 3 classes takes no "
        r"example.*exact_k: true",
    ):
        load_splits(TaskConfig(name="cb", files=files, few_shot={"k": 2, "per": "total"}))
    assert (
        len(load_splits(TaskConfig(name="cb", files=files, few_shot={"k": 2, "per": "total", "exact_k": True})).train)
        == 2
    )
    with pytest.raises(
        ValueError,
        match=r"task.few_shot.k: 53 examples in all \(the official draw: 51\), but the "
        r"train split yields only 50",
    ):  # 16 neutral: 17 each is out of reach
        load_splits(TaskConfig(name="cb", files=files, few_shot={"k": 53, "per": "total"}))
    with pytest.raises(ValueError, match="exact_k is for per: total"):
        TaskConfig(name="cb", few_shot={"k": 4, "per": "class", "exact_k": True})


def test_per_class_k_draws_k_of_every_class_reproducibly(tmp_path):
    files = cb_files(tmp_path)
    cfg = TaskConfig(name="cb", files=files, few_shot={"k": 5, "per": "class", "seed": 3})
    drawn = load_splits(cfg)
    assert sorted(e.target for e in drawn.train) == ["0"] * 5 + ["1"] * 5 + ["2"] * 5
    assert load_splits(cfg).train == drawn.train
    assert (
        load_splits(cfg.model_copy(update={"few_shot": cfg.few_shot.model_copy(update={"seed": 4})})).train
        != drawn.train
    )
    with pytest.raises(ValueError, match="task.few_shot.k: 100 examples in all, but the train split yields only"):
        load_splits(TaskConfig(name="cb", files=files, few_shot={"k": 100, "per": "total"}))


def test_stsb_total_k_balances_the_two_bins_of_the_official_code():
    from deptune.tasks.config import FewShotConfig
    from deptune.tasks.loading import few_shot_total

    train = [Example("s", f"{v:.1f}") for v in [0.4, 4.0, 1.0, 3.0, 2.5, 2.6, 0.0, 5.0] * 3]
    drawn = few_shot_total(train, FewShotConfig(k=6, per="total", seed=0), get_task("stsb"))
    bins = ["0" if float(e.target) <= 2.5 else "1" for e in train]  # the official code's STS-B classes
    assert drawn == [train[i] for i in official_k_shot(bins, 6, 0, n_classes=2)]


def test_the_old_k_shot_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"task.k_shot: renamed.*few_shot: \{k: 32, per: class\}.*per: total"):
        TaskConfig(name="rte", k_shot=32)
    with pytest.raises(ValueError, match="per"):
        TaskConfig(name="rte", few_shot={"k": 32})  # what k counts must be said


# --- SQuAD and ReCoRD ----------------------------------------------------------------------------------

SQUAD_ROWS = [
    {
        "id": "a",
        "title": "T",
        "context": "Denver (the Broncos) won Super Bowl 50.",
        "question": "Who won?",
        "answers": {"text": ["Denver", "the Broncos"], "answer_start": [0, 8]},
    },
    {
        "id": "b",
        "title": "T",
        "context": "It was in Santa Clara.",
        "question": "Where was it?",
        "answers": {"text": ["Santa Clara"], "answer_start": [10]},
    },
]
RECORD_ROWS = [
    {
        "passage": "A penguin swims.\n@highlight\nBirds can swim",
        "query": "A @placeholder is a bird.",
        "entities": ["penguin", "pigeon", "potato"],
        "answers": ["penguin", "pigeon"],
        "idx": {"passage": 0},
    },
    {
        "passage": "Paris is big.",
        "query": "@placeholder is a city.",
        "entities": ["Paris"],
        "answers": ["Paris"],
        "idx": {"passage": 1},
    },
]


def test_squad_formats_as_t5_and_scores_the_best_answer():
    squad = get_task("squad")
    example = squad.format(SQUAD_ROWS[0])
    assert example.source == "question: Who won ?  context: Denver ( the Broncos ) won Super Bowl 50 . "
    assert example.target == "Denver" and example.answers == ("Denver", "the Broncos")
    scores = squad.compute_metrics(
        ["the broncos!", "Santa", "nothing"], [example.reference, "Santa Clara", "Santa Clara"]
    )
    # em: "broncos" matches "the Broncos" after normalising; f1: 1, 2*(1*0.5)/1.5 = 2/3, 0
    assert scores == {"em": pytest.approx(1 / 3), "f1": pytest.approx((1 + 2 / 3 + 0) / 3)}
    assert list(scores) == ["em", "f1"]


def test_record_makes_one_example_per_answer_and_scores_against_all():
    record = get_task("record")
    examples = record.format_all(RECORD_ROWS[0])
    assert [e.target for e in examples] == ["penguin", "pigeon"]
    assert examples[0].source == (
        "record query: A @placeholder is a bird. entities: penguin, pigeon, potato "
        "passage: A penguin swims. Birds can swim"
    )
    assert record.compute_metrics(["pigeon", "potato"], [e.reference for e in examples]) == {"f1": 0.5, "em": 0.5}
    assert record.format_all({**RECORD_ROWS[1], "answers": []})[0].target == "<unk>"


@pytest.mark.parametrize(("name", "rows", "per_row"), [("squad", SQUAD_ROWS, [1, 1]), ("record", RECORD_ROWS, [2, 1])])
def test_qa_tasks_load_from_small_files(tmp_path, name, rows, per_row):
    files = {role: str(write_jsonl(tmp_path / f"{role}.jsonl", rows)) for role in ("train", "validation", "test")}
    splits = load_splits(TaskConfig(name=name, files=files))
    assert len(splits.train) == len(splits.validation) == len(splits.test) == sum(per_row)
    assert splits.train[0] == get_task(name).format(rows[0])
    perfect = get_task(name).compute_metrics([e.target for e in splits.test], [e.reference for e in splits.test])
    assert all(v == 1.0 for v in perfect.values())


def test_record_splits_count_rows_so_an_answers_copies_stay_together(tmp_path):
    rows = [{**RECORD_ROWS[0], "query": f"Q{i} @placeholder."} for i in range(1003)]  # 2 answers each
    files = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", rows)),
        "validation": str(write_jsonl(tmp_path / "val.jsonl", RECORD_ROWS)),
    }
    splits = load_splits(TaskConfig(name="record", files=files))
    assert len(splits.validation) == 2000 and len(splits.train) == 6  # 1,000 rows held out, 3 left, 2 copies each
    held_out = {e.source for e in splits.validation}
    assert not held_out & {e.source for e in splits.train} and len(held_out) == 1000
    assert len(splits.test) == 3  # the official validation: 2 + 1 answers
