"""The training loop, its data and the `deptune` CLI, end to end on tiny offline backbones."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from deptune.backbones import BackboneConfig, load_backbone
from deptune.cli import app
from deptune.methods.adapters import build_model, load_adapter
from deptune.methods.dept.config import DePTConfig
from deptune.spec_base import SpecError
from deptune.specs import load_spec, parse_spec
from deptune.tasks.base import Example
from deptune.tasks.catalog import get_task
from deptune.train.data import GlobalBatches, encode, eval_batch, train_batch
from deptune.train.loop import train

METRIC_KEYS = {
    "step",
    "objective",
    "eval_accuracy",
    "eval_f1",
    "train_loss",
    "step_time_s",
    "tokens_per_s",
    "peak_memory_mb",
    "trainable_params",
    "best_objective",
    "best_step",
}


def spec(tmp_path, backbone="tiny-bert", steps=300, **train):
    return parse_spec(
        {
            "backbone": {"name": backbone},
            "task": {"name": "synthetic", "synthetic_size": 1000},
            "method": {"name": "dept", "prompt_length": 8, "budget": 16, "max_length": 32},
            "train": {
                "steps": steps,
                "batch_size": 32,
                "lr_prompt": 0.3,
                "lr_lowrank": 0.005,
                "lr_head": 0.01,
                "warmup_steps": 30,
                "eval_every": 50,
                "output_dir": str(tmp_path),
                **train,
            },
        }
    )


def test_the_loop_learns_the_synthetic_task_and_keeps_the_best_adapter(tmp_path):
    reports = []
    result = train(spec(tmp_path), reporter=lambda m, d: reports.append((m, d)))
    assert [m["step"] for m, _ in reports] == [50, 100, 150, 200, 250, 300]
    assert all(METRIC_KEYS <= m.keys() for m, _ in reports)
    assert result.best_metrics["accuracy"] >= 0.9 and result.test_metrics["accuracy"] >= 0.9  # chance is 0.5
    best = max(reports, key=lambda r: r[0]["objective"])  # first maximum wins: ties keep the earlier step
    assert result.best_step == best[0]["step"] and best[1] == tmp_path / "best"
    assert (
        reports[-1][0]["trainable_params"] == result.trainable_params == 8 * 64 + 5 * (32 + 64) + 130
    )  # r = (16-8)*64 // 96 = 5
    assert all(m["tokens_per_s"] > 0 and m["step_time_s"] > 0 and m["peak_memory_mb"] > 0 for m, _ in reports)
    reloaded = load_adapter(load_backbone(BackboneConfig(name="tiny-bert")), result.adapter_dir)
    assert (
        reloaded.config.rank == 5
        and json.loads((result.adapter_dir / "adapter_config.json").read_text())["task"] == "synthetic"
    )


@pytest.mark.parametrize("backbone", ["tiny-t5", "tiny-gpt2", "tiny-llama"])
def test_generative_families_train_and_evaluate_by_generation(tmp_path, backbone):
    result = train(spec(tmp_path, backbone=backbone, steps=40, eval_every=20, warmup_steps=5))
    first, last = result.history[0], result.history[-1]
    assert [h["step"] for h in result.history] == [20, 40]
    assert last["train_loss"] < first["train_loss"]  # the loss falls
    assert (
        0.0 <= result.test_metrics["accuracy"] <= 1.0 and (result.adapter_dir / "adapter_model.safetensors").is_file()
    )


def test_causal_batches_mask_the_source_and_left_pad_for_generation():
    bb = load_backbone(BackboneConfig(name="tiny-gpt2"))
    task = get_task("synthetic")
    items = encode([Example("sentence: good", "1"), Example("sentence: the movie was bad", "0")], bb, task, 32, 8)
    batch = train_batch(items, bb)
    first = items[0]
    n_src, n_tgt = len(first.source_ids), len(first.target_ids)
    assert batch["labels"][0, :n_src].eq(-100).all()
    assert batch["labels"][0, n_src : n_src + n_tgt].tolist() == first.target_ids
    assert first.target_ids[-1] == bb.tokenizer.eos_token_id
    assert (
        batch["labels"][0, n_src + n_tgt :].eq(-100).all() and batch["attention_mask"][0, n_src + n_tgt :].eq(0).all()
    )
    ev = eval_batch(items, bb)
    assert ev["attention_mask"][0, 0] == 0 and ev["attention_mask"][0, -1] == 1  # left padded
    model = build_model(bb, DePTConfig(prompt_length=4, rank=2, max_length=32))
    from deptune.train.loss import item_count, loss_sum

    assert item_count(batch, "causal") == sum(len(i.target_ids) for i in items)  # every answer token scored
    assert loss_sum(model, batch).item() > 0


def test_official_causal_examples_are_the_official_codes():
    """train.py 336-346: `tokenizer(f"{x} Label : ")`, then `tokenizer(y)` + the pad id, within s."""
    bb = load_backbone(BackboneConfig(name="tiny-gpt2"))
    tok, task = bb.tokenizer, get_task("synthetic")
    examples = [Example("sentence: good", "1"), Example("sentence: " + "bad " * 40, "0")]
    short, long = encode(examples, bb, task, 24, 8, causal_rule="official")
    assert short.source_ids == tok("sentence: good Label : ")["input_ids"]
    assert short.target_ids == tok("1")["input_ids"] + [tok.pad_token_id]
    assert long.target_ids == tok("0")["input_ids"] + [tok.pad_token_id]  # the answer is kept, the source cut
    assert long.source_ids == tok(examples[1].source)["input_ids"][: 24 - len(long.target_ids)]
    aligned = encode(examples, bb, task, 24, 8)[0]
    assert aligned.target_ids == tok(" 1", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(aligned.source_ids) < len(short.source_ids)  # no cue


def test_an_official_causal_run_learns_and_its_adapter_keeps_the_rule(tmp_path):
    run = spec(tmp_path, backbone="tiny-gpt2", steps=40, eval_every=20, warmup_steps=5)
    run = run.model_copy(update={"method": run.method.model_copy(update={"causal_rule": "official"})})
    result = train(run, reporter=lambda m, d: None)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    record = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert record["method_config"]["causal_rule"] == "official"
    assert (
        load_adapter(load_backbone(BackboneConfig(name="tiny-gpt2")), result.adapter_dir).config.causal_rule
        == "official"
    )
    del record["method_config"]["causal_rule"]  # an adapter saved before the rule existed: trained aligned
    (result.adapter_dir / "adapter_config.json").write_text(json.dumps(record))
    assert (
        load_adapter(load_backbone(BackboneConfig(name="tiny-gpt2")), result.adapter_dir).config.causal_rule
        == "aligned"
    )


def test_global_batches_are_deterministic_and_split_exactly_across_workers():
    batches = GlobalBatches(size=100, batch_size=8, seed=3)
    assert batches.per_epoch == 12
    one = [batches.indices(step) for step in range(30)]
    assert one == [batches.indices(step) for step in range(30)]
    for step in (0, 13, 29):
        shards = [batches.indices(step, rank, 2) for rank in range(2)]
        assert sorted(shards[0] + shards[1]) == sorted(one[step]) and len(shards[0]) == 4
    assert len(set(sum(one[:12], []))) == 96  # one epoch: no repeats
    assert one[12] != one[0]  # a new epoch reshuffles
    small = GlobalBatches(size=5, batch_size=8, seed=0)  # a set smaller than the batch: all of it every step
    assert [sorted(small.indices(step)) for step in range(3)] == [[0, 1, 2, 3, 4]] * 3
    with pytest.raises(ValueError, match="fewer than the 8 workers"):
        small.indices(0, 0, 8)


def test_spec_errors_name_every_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "backbone": {"name": "tiny-t5", "hidden": 3},
                "task": {"name": "synthetic"},
                "method": {"name": "dept", "prompt_length": 0, "budget": 10},
                "train": {"lr_prompt": -1},
                "extra": 1,
            }
        )
    )
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert set(err.value.errors) == {
        "backbone.hidden: Extra inputs are not permitted",
        "extra: Extra inputs are not permitted",
        "method.prompt_length: Input should be greater than 0",
        "train.lr_prompt: Input should be greater than 0",
    }
    with pytest.raises(SpecError, match="method.name: unknown method 'lora'; known: dept, mpt, prompt_tuning"):
        parse_spec({"backbone": {"name": "x"}, "task": {"name": "synthetic"}, "method": {"name": "lora"}})


def test_cli_validate_and_train(tmp_path):
    runner = CliRunner()
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(spec(tmp_path).model_dump(mode="json")))
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: {name: tiny-t5}\ntask: {name: synthetic}\nmethod: {name: dept, rank: 4, typo: 1}\n")
    result = runner.invoke(app, ["validate", str(good), str(bad)])
    assert result.exit_code == 2
    assert f"{good}: ok" in result.output and "method.typo: Extra inputs are not permitted" in result.output
    result = runner.invoke(
        app,
        [
            "train",
            str(good),
            "--local",
            "--set",
            "train.steps=20",
            "--set",
            "train.eval_every=10",
            "--set",
            "train.warmup_steps=2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "best step" in result.output and "test: accuracy=" in result.output and "1,122 trainable" in result.output


def test_data_problems_fail_before_the_backbone_loads(tmp_path):
    data = tmp_path / "train.csv"
    data.write_text("text,label\nhello,1\n")
    bad = spec(tmp_path).model_dump(mode="json")
    bad["backbone"]["name"] = "no/such-model-anywhere"  # would fail later, and differently
    bad["task"] = {"name": "sst2", "files": {"train": str(data)}}
    with pytest.raises(ValueError, match="sentence"):
        train(parse_spec(bad))


def test_scoring_the_best_adapter_leaves_the_current_one_in_place():
    from deptune.tasks.catalog import get_task
    from deptune.train.checkpoint import Progress
    from deptune.train.evaluate import evaluate
    from deptune.train.loop import score_best

    bb = load_backbone(BackboneConfig(name="tiny-bert"))
    model = build_model(bb, DePTConfig(prompt_length=4, rank=2, max_length=32))
    progress = Progress()
    progress.improve(1, 0.5, {"accuracy": 0.5}, model)  # the best is the initial adapter
    with torch.no_grad():
        model.lora_embedding_B.add_(1.0)  # training moved on
    current = {k: v.detach().clone() for k, v in model.adapter_tensors().items()}
    task = get_task("synthetic")
    examples = encode(task.splits(50, 0).test, bb, task, 32, 8)
    assert not torch.equal(progress.best_adapter["lora_embedding_B"], current["lora_embedding_B"])
    cfg, seen = spec_for_scoring(), {}

    def score():
        seen.update({k: v.detach().clone() for k, v in model.adapter_tensors().items()})
        return evaluate(model, bb, task, examples, cfg.eval_batch_size, cfg.max_new_tokens, torch.device("cpu"))

    best_metrics = score_best(model, progress, score)
    assert set(best_metrics) == {"accuracy", "f1"}
    for key, value in seen.items():  # scored with the best tensors in place
        torch.testing.assert_close(value, progress.best_adapter[key], rtol=0, atol=0)
    for key, value in model.adapter_tensors().items():
        torch.testing.assert_close(value, current[key], rtol=0, atol=0)


def spec_for_scoring():
    from deptune.train.config import TrainConfig

    return TrainConfig(steps=2, warmup_steps=0)


@pytest.mark.parametrize("seed", [-1, 12345, 10**30])
def test_any_integer_train_seed_trains_and_a_small_one_keeps_its_numbers(tmp_path, seed):
    """Issue 22: numpy, torch and Python's generators each take a different range; every seed is brought
    into 0..2**32-1 (itself when already there, so runs seeded so keep their numbers), never a crash."""
    from deptune.spec_base import rng_seed

    run = spec(tmp_path, steps=2, eval_every=2, warmup_steps=1, seed=seed, evaluate_test=False)
    run = run.model_copy(
        update={
            "backbone": run.backbone.model_copy(update={"tiny": run.backbone.tiny.model_copy(update={"seed": seed})})
        }
    )
    assert 0 <= run.train.rng_seed < 2**32 and run.train.rng_seed == (seed if 0 <= seed < 2**32 else rng_seed(seed))
    result = train(run)
    assert result.best_step == 2 and result.adapter_dir.is_dir()


def test_a_checkpoint_retention_deleted_is_replaced_by_the_newest_whole_one(tmp_path):
    """Ray's saved state can name a checkpoint that retention deleted after the state was saved (the driver
    was killed between the two, issue 22): the restore takes the newest whole checkpoint beside it, never a
    half-uploaded one; a checkpoint that exists is taken as it is."""
    from ray.train import Checkpoint

    from deptune.cluster.trainer import CHECKPOINT_FILES, restored_checkpoint

    trial = tmp_path / "trial"
    for step in (17, 19, 24):
        folder = trial / f"checkpoint_{step:06d}"
        folder.mkdir(parents=True)
        for name in CHECKPOINT_FILES:
            (folder / name).write_text(str(step))
    (trial / "checkpoint_000025").mkdir()
    (trial / "checkpoint_000025" / CHECKPOINT_FILES[0]).write_text("25")  # its upload was cut short
    deleted = restored_checkpoint(Checkpoint(str(trial / "checkpoint_000023")))
    assert (deleted / CHECKPOINT_FILES[-1]).read_text() == "24"
    kept = restored_checkpoint(Checkpoint(str(trial / "checkpoint_000019")))
    assert (kept / CHECKPOINT_FILES[-1]).read_text() == "19"
    assert restored_checkpoint(None) is None
