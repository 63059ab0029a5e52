"""The papers' protocols where a spec asks for them: fp32 paper specs, the official text init, tiny training
sets that train with a larger batch, and the number each paper's table reports beside the objective."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from deptune.backbones import BackboneConfig, load_backbone
from deptune.methods.adapters import build_model
from deptune.methods.budget import dept_count, rank_for_budget
from deptune.methods.dept.config import DePTConfig
from deptune.methods.prompt_tuning.config import PromptTuningConfig
from deptune.specs import load_spec, parse_spec
from deptune.train.loop import train
from deptune.train.spec import SourceSpec

ROOT = Path(__file__).resolve().parents[1]
PAPER_SPECS = sorted(
    p
    for p in [*ROOT.glob("search_spaces/*.yaml"), *ROOT.glob("search_spaces/sources/*.yaml")]
    if "t5-base" in p.read_text()
)


def test_every_paper_spec_trains_in_fp32():
    assert len(PAPER_SPECS) >= 20  # the GLUE/SuperGLUE specs, few-shot, transfer and the MPT source spec
    for path in PAPER_SPECS:
        spec = load_spec(path)
        assert spec.backbone.name == "t5-base", path
        stages = [spec.teacher, spec.train] if isinstance(spec, SourceSpec) else [spec.train]
        assert all(stage.precision == "fp32" for stage in stages), path
        assert "bf16" in path.read_text(), path  # and each says how bf16 is one setting away


def test_paper_few_shot_specs_draw_with_the_runs_seed_by_the_official_loop():
    """The official train.py draws k_shot_example with the run's --seed (HF's default 42 in its scripts)."""
    few_shot = [spec for spec in map(load_spec, PAPER_SPECS) if getattr(spec, "task", None) and spec.task.few_shot]
    assert len(few_shot) >= 8  # BoolQ and CB at k = 4, 16, 32; RTE for MPT and DePT transfer
    for spec in few_shot:
        assert spec.task.few_shot.seed == spec.train.seed == 42 and not spec.task.few_shot.exact_k, spec.task
        assert spec.task.few_shot.per == "total"


def test_multirc_at_s_348_keeps_the_budget_its_comment_says():
    """The released MultiRC run (m = 60, r = 30, s = 348) is over l*d = 76,800; the spec derives r = 27."""
    path = ROOT / "search_spaces" / "superglue_multirc_t5_base.yaml"
    method = load_spec(path).base_run().method.resolve(768)
    assert (method.prompt_length, method.rank, method.max_length) == (60, 27, 348)
    assert dept_count(60, 27, 768, 348) == 76_212 <= 76_800 < dept_count(60, 30, 768, 348) == 79_560
    table = re.search(r"at s=348, \(m, r\): ((?:\(\d+, \d+\)(?:, )?)+)", path.read_text()).group(1)
    pairs = [tuple(map(int, p)) for p in re.findall(r"\((\d+), (\d+)\)", table)]
    assert pairs == [(m, rank_for_budget(100, 768, 348, m).rank) for m, _ in pairs] == [(40, 41), (60, 27), (80, 13)]


@pytest.mark.parametrize("method", ["pt", "dept"])
def test_text_init_is_the_official_tokenisation_tiled(method):
    """The official code: ids = tokenizer(text)["input_ids"] (T5 keeps </s>), tiled by ceil(n / len(ids)), cut to n."""
    bb = load_backbone(BackboneConfig(name="tiny-t5"))
    text, n = "Classify this text is postive or not:", 17
    ids = bb.tokenizer(text)["input_ids"]
    assert ids[-1] == bb.tokenizer.eos_token_id  # </s> is part of the initial prompt
    official = (ids * math.ceil(n / len(ids)))[:n]
    config = (
        PromptTuningConfig(prompt_length=n, init="text", init_text=text, max_length=32)
        if method == "pt"
        else DePTConfig(prompt_length=n, rank=2, init="text", init_text=text, max_length=32)
    )
    model = build_model(bb, config)
    expected = bb.model.get_input_embeddings().weight.detach()[torch.tensor(official)].float()
    torch.testing.assert_close(model.prompt_embeddings.detach(), expected, rtol=0, atol=0)
    short = build_model(bb, PromptTuningConfig(prompt_length=3, init="text", init_text=text, max_length=32))
    torch.testing.assert_close(
        short.prompt_embeddings.detach(), bb.model.get_input_embeddings().weight.detach()[ids[:3]], rtol=0, atol=0
    )


def fewglue_cb(tmp_path: Path, n: int = 32) -> dict:
    """A FewGLUE-layout CB set (SuperGLUE JSONL, string labels) of n training examples."""
    labels = ["entailment", "contradiction", "neutral"]

    def write(name: str, count: int) -> str:
        rows = [
            {
                "premise": f"The cat {'sat' if i % 3 else 'ran'} {i}.",
                "hypothesis": "It moved.",
                "label": labels[i % 3],
                "idx": i,
            }
            for i in range(count)
        ]
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(tmp_path / name)

    return {"train": write("train.jsonl", n), "validation": write("val.jsonl", 12)}


@pytest.mark.parametrize("batch_size", [32, 64])
def test_a_32_example_set_trains_with_batch_32_and_larger(tmp_path, batch_size):
    spec = parse_spec(
        {
            "backbone": {"name": "tiny-t5"},
            "task": {"name": "cb", "files": fewglue_cb(tmp_path)},
            "method": {"name": "dept", "prompt_length": 4, "rank": 2, "max_length": 32},
            "train": {
                "steps": 3,
                "batch_size": batch_size,
                "warmup_steps": 1,
                "eval_every": 3,
                "max_new_tokens": 2,
                "output_dir": str(tmp_path / "out"),
                "evaluate_test": True,
            },
        }
    )
    result = train(spec, reporter=lambda m, d: None)
    report = result.history[-1]
    assert report["step"] == 3 and math.isfinite(report["train_loss"]) and report["train_loss"] > 0
    assert result.adapter_dir is not None and (result.adapter_dir / "adapter_model.safetensors").is_file()
    # the table's figure beside the selection metric: CB selects on macro-F1, the paper reports accuracy
    assert report["objective"] == report["eval_f1_multiclass"]
    assert report["paper_metric"] == report["eval_accuracy"]
    assert report["test_paper_metric"] == report["test_accuracy"] == result.test_metrics["paper_metric"]


def test_squad_trains_and_scores_end_to_end_on_a_tiny_model(tmp_path):
    rows = [
        {"question": f"Who is {i}?", "context": f"Person {i} is Bob.", "answers": {"text": ["Bob"]}} for i in range(6)
    ]
    path = tmp_path / "squad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = parse_spec(
        {
            "backbone": {"name": "tiny-t5"},
            "task": {"name": "squad", "files": {"train": str(path), "validation": str(path), "test": str(path)}},
            "method": {"name": "prompt_tuning", "prompt_length": 4, "max_length": 32},
            "train": {
                "steps": 2,
                "batch_size": 4,
                "warmup_steps": 1,
                "eval_every": 2,
                "max_new_tokens": 3,
                "output_dir": str(tmp_path / "out"),
                "evaluate_test": False,
            },
        }
    )
    report = train(spec, reporter=lambda m, d: None).history[-1]
    assert report["objective"] == report["eval_em"] and report["paper_metric"] == report["eval_f1"]
    assert 0.0 <= report["eval_em"] <= report["eval_f1"] <= 1.0
    encoder = spec.model_copy(update={"backbone": BackboneConfig(name="tiny-bert")})
    with pytest.raises(ValueError, match="squad is generative .*needs a seq2seq or causal backbone"):
        train(encoder, reporter=lambda m, d: None)
