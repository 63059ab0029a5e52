"""MPT: P* ⊙ (u_k v_k^T), the multitask source stage, transfer to a target; DePT's transfer
side by side. Tiny offline backbones and the built-in synthetic tasks (synthetic_a, synthetic_b: polarity
over half of the polar words each; their union is synthetic, the related target)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from deptune import checks
from deptune.backbones import BackboneConfig, load_backbone
from deptune.cli import app
from deptune.methods.adapters import build_model, load_adapter
from deptune.methods.budget import mpt_count
from deptune.methods.dept.config import DePTConfig
from deptune.methods.io import save_adapter
from deptune.methods.mpt.config import MPTConfig
from deptune.methods.prompt_tuning.config import PromptTuningConfig
from deptune.methods.record import CONFIG_FILE, read_record
from deptune.spec_base import SpecError
from deptune.specs import load_spec, parse_spec
from deptune.sweep.space import plan_search
from deptune.tasks.config import TaskConfig
from deptune.tasks.loading import load_splits
from deptune.tracking.sources import localize_sources
from deptune.train.loop import train
from deptune.train.multitask import train_source
from deptune.train.spec import SourceSpec

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["synthetic_a", "synthetic_b"]
FAST = {
    "batch_size": 32,
    "lr_prompt": 0.3,
    "lr_lowrank": 0.05,
    "lr_head": 0.05,
    "warmup_steps": 5,
    "evaluate_test": False,
}
TEACHER = {k: v for k, v in FAST.items() if k != "lr_lowrank"}  # vanilla PT: no low-rank group


def source_spec(tmp_path: Path, backbone: str = "tiny-bert", steps: int = 60) -> SourceSpec:
    return parse_spec(source_data(tmp_path, backbone, steps))


def source_data(tmp_path: Path, backbone: str = "tiny-bert", steps: int = 60) -> dict:
    return {
        "backbone": {"name": backbone},
        "source_tasks": [{"name": t, "synthetic_size": 400} for t in SOURCES],
        "method": {"name": "mpt", "prompt_length": 8, "max_length": 32},
        "teacher": {**TEACHER, "steps": steps + steps // 3, "eval_every": steps + steps // 3},
        "train": {**FAST, "steps": steps, "eval_every": steps // 3, "output_dir": str(tmp_path / "source")},
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """One source stage on tiny-bert, shared by the tests below."""
    return train_source(source_spec(tmp_path_factory.mktemp("mpt")), reporter=lambda m, d: None)


# ----- the method ------------------------------------------------------------------------------------------
def test_trainable_count_is_ld_plus_rank_times_l_plus_d():
    assert mpt_count(100, 1, 768) == 77_668 == 100 * 768 + 100 + 768  # T5-Base, l=100, rank 1
    assert mpt_count(100, 2, 768, tasks=4) == 100 * 768 + 4 * 2 * (100 + 768)


@pytest.mark.parametrize("name", ["tiny-t5", "tiny-gpt2", "tiny-bert"])
def test_trainable_counts_on_every_family(name):
    bb = load_backbone(BackboneConfig(name=name))
    d = bb.hidden_size
    head = 2 * d + 2 if bb.family == "encoder" else 0
    for rank in (1, 3):
        model = build_model(bb, MPTConfig(prompt_length=10, rank=rank, max_length=32))
        assert model.trainable_parameter_count() == mpt_count(10, rank, d) + head
        assert model.prompt().shape == (10, d)
    multi = build_model(bb, MPTConfig(prompt_length=10, max_length=32, source_tasks=SOURCES))
    assert multi.trainable_parameter_count() == mpt_count(10, 1, d, tasks=2)  # a source adapter has no head
    assert multi.prefix_task_cols.shape == (2, 10, 1) and multi.prefix_task_rows.shape == (2, 1, d)


def test_a_fresh_prompt_is_p_star_so_step_zero_is_prompt_tuning():
    bb = load_backbone(BackboneConfig(name="tiny-t5"))
    mpt = build_model(bb, MPTConfig(prompt_length=6, rank=2, max_length=32)).eval()
    pt = build_model(bb, PromptTuningConfig(prompt_length=6, max_length=32)).eval()
    with torch.no_grad():
        pt.prompt_embeddings.copy_(mpt.prompt_embeddings)
    torch.testing.assert_close(mpt.prompt(), mpt.prompt_embeddings, rtol=0, atol=0)  # u v^T = 1 exactly
    ids = bb.tokenizer(["sentence: good day"], return_tensors="pt")
    labels = bb.tokenizer(["1"], return_tensors="pt")["input_ids"]
    torch.testing.assert_close(
        mpt(ids["input_ids"], ids["attention_mask"], labels=labels).logits,
        pt(ids["input_ids"], ids["attention_mask"], labels=labels).logits,
        rtol=0,
        atol=0,
    )


def test_each_task_gets_its_own_prompt():
    bb = load_backbone(BackboneConfig(name="tiny-gpt2"))
    model = build_model(bb, MPTConfig(prompt_length=4, max_length=32, source_tasks=SOURCES))
    with torch.no_grad():
        model.prefix_task_cols[1].fill_(2.0)
    with model.for_task(1):
        torch.testing.assert_close(model.prompt(), 2 * model.prompt_embeddings)
    torch.testing.assert_close(model.prompt(), model.prompt_embeddings)


def test_config_is_strict_with_key_paths(tmp_path):
    base = {"backbone": {"name": "tiny-bert"}, "task": {"name": "synthetic"}}
    for method, message in [
        ({"name": "mpt", "rnak": 2}, "method.rnak"),
        ({"name": "mpt", "source_tasks": ["a", "b"]}, "method.source_tasks: a run trains one"),
    ]:
        with pytest.raises(SpecError, match=message):
            parse_spec({**base, "method": method})
    good = {
        "backbone": {"name": "tiny-bert"},
        "source_tasks": [{"name": t} for t in SOURCES],
        "method": {"name": "mpt"},
        "train": {"batch_size": 16},
    }
    for change, message in [
        (
            {"train": {"batch_size": 15}, "mixing": {"strategy": "balanced"}},
            "train.batch_size: 15 must be divisible by the 2",
        ),
        ({"distill": {"kl_weight": 1.0}}, "distill.kl_weight: replaced by distill.weight"),
        ({"method": {"name": "dept", "rank": 2}}, "method.name: the source stage trains mpt"),
        ({"source_tasks": [{"name": "synthetic_a"}] * 2}, "source_tasks.1.name"),
        ({"method": {"name": "mpt", "init_from": str(tmp_path)}}, "method.init_from"),
        (
            {"resources": {"workers": 3}, "teacher": {"batch_size": 18}},
            r"train.batch_size: 16 must be divisible by resources",
        ),
        ({"resources": {"workers": 2}, "teacher": {"batch_size": 9}}, "teacher.batch_size: 9"),
        ({"resources": {"wrokers": 2}}, "resources.wrokers"),
    ]:
        with pytest.raises(SpecError, match=message):
            parse_spec({**good, **change})


# ----- the source stage ------------------------------------------------------------------------------------
def test_source_stage_lowers_both_tasks_loss_and_the_distillation_terms(source):
    first, last = source.history[0], source.history[-1]
    for task in SOURCES:
        for term in ("loss", "kl", "mse"):
            assert last[f"{term}_{task}"] < first[f"{term}_{task}"], (term, task, first, last)
    assert set(source.teacher_dirs) == set(SOURCES)
    assert all(read_record(d).method == "prompt_tuning" for d in source.teacher_dirs.values())


def test_source_adapter_round_trips_with_its_task_list(source):
    record = json.loads((source.adapter_dir / CONFIG_FILE).read_text())
    assert record["method"] == "mpt" and record["method_config"]["source_tasks"] == SOURCES
    fresh = load_backbone(BackboneConfig(name="tiny-bert"))
    loaded = load_adapter(fresh, source.adapter_dir)
    saved = {k: v.detach().clone() for k, v in loaded.adapter_tensors().items()}
    assert set(saved) == {"prompt_embeddings", "prefix_task_cols", "prefix_task_rows"}  # no head
    save_adapter(loaded, source.adapter_dir.parent / "again", "tiny-bert")
    again = load_adapter(load_backbone(BackboneConfig(name="tiny-bert")), source.adapter_dir.parent / "again")
    for key, value in again.adapter_tensors().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)


def test_target_init_is_p_star_times_the_mean_vectors(source):
    saved = load_adapter(load_backbone(BackboneConfig(name="tiny-bert")), source.adapter_dir)
    p, u, v = (
        saved.method_tensors()[k].detach() for k in ("prompt_embeddings", "prefix_task_cols", "prefix_task_rows")
    )
    bb = load_backbone(BackboneConfig(name="tiny-bert"))
    target = build_model(bb, MPTConfig(prompt_length=8, max_length=32, init_from=source.adapter_dir))
    assert target.config.n_tasks == 1
    torch.testing.assert_close(target.prompt().detach(), p * (u.mean(0) @ v.mean(0)), rtol=0, atol=0)
    one = build_model(
        bb, MPTConfig(prompt_length=8, max_length=32, init_from=source.adapter_dir, init_vectors="synthetic_b")
    )
    torch.testing.assert_close(one.prompt().detach(), p * (u[1] @ v[1]), rtol=0, atol=0)
    alone = build_model(
        bb, MPTConfig(prompt_length=8, max_length=32, init_from=source.adapter_dir, init_vectors="none")
    )
    torch.testing.assert_close(alone.prompt().detach(), p, rtol=0, atol=0)
    with pytest.raises(ValueError, match="init_vectors: 'rte' is not a source task"):
        build_model(bb, MPTConfig(prompt_length=8, max_length=32, init_from=source.adapter_dir, init_vectors="rte"))
    with pytest.raises(ValueError, match="l, r and d must match"):
        build_model(bb, MPTConfig(prompt_length=9, max_length=32, init_from=source.adapter_dir))


def steps_to(threshold: float, history: list[dict]) -> float:
    return next((h["step"] for h in history if h["eval_accuracy"] >= threshold), float("inf"))


def test_a_target_started_from_the_source_adapter_learns_the_related_task_faster(source, tmp_path):
    def run(init_from):
        method = {"name": "mpt", "prompt_length": 8, "max_length": 32}
        spec = parse_spec(
            {
                "backbone": {"name": "tiny-bert"},
                "task": {"name": "synthetic", "synthetic_size": 400, "split_seed": 7},
                "method": {**method, **({"init_from": str(init_from)} if init_from else {})},
                "train": {**FAST, "steps": 60, "eval_every": 5, "output_dir": str(tmp_path / str(bool(init_from)))},
            }
        )
        return train(spec, reporter=lambda m, d: None).history

    transferred, scratch = run(source.adapter_dir), run(None)
    assert steps_to(0.75, transferred) < steps_to(0.75, scratch), (
        [h["eval_accuracy"] for h in transferred],
        [h["eval_accuracy"] for h in scratch],
    )


# ----- adapter references, preflight, specs ----------------------------------------------------------------
def test_every_source_adapter_reference_resolves_through_one_function(tmp_path, monkeypatch):
    """Registry references are fetched by the drivers (`tracking.sources.localize_sources`) before a spec
    reaches a method; a method given an unresolved one says so (tests/test_tracking.py fetches a real
    registered adapter; here an empty registry names the missing model)."""
    uri_store = f"sqlite:///{tmp_path}/mlflow.db"
    for uri in ("models:/deptune-rte-mpt/3", "models:/deptune-rte-mpt@champion"):
        spec = run_spec(uri)
        assert spec.method.init_from == uri  # stays a string: a Path would mangle it
        with pytest.raises(SpecError, match="method.init_from: cannot fetch models:/deptune-rte-mpt"):
            localize_sources(spec, uri_store, "spec.yaml")
        with pytest.raises(ValueError, match="method.init_from: .* was not fetched from the registry"):
            build_model(load_backbone(BackboneConfig(name="tiny-bert")), DePTConfig(rank=2, init_from=uri))
    local = run_spec(str(tmp_path))
    assert localize_sources(local, uri_store, "spec.yaml") is local  # a folder is used as given


def run_spec(init_from, **method):
    return parse_spec(
        {
            "backbone": {"name": "tiny-bert"},
            "task": {"name": "synthetic"},
            "method": {"name": "mpt", "prompt_length": 8, "max_length": 32, "init_from": init_from, **method},
        }
    )


def test_preflight_names_the_key_and_the_file(source, tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(
        SpecError,
        match="method.init_from: models:/source/1 is looked up in the Model Registry at "
        ".*, but there is no MLflow store there",
    ):
        checks.check(run_spec("models:/source/1"), "spec", tracking_uri=store)  # nothing to fetch it from
    (tmp_path / "mlflow.db").touch()
    checks.check(run_spec("models:/source/1"), "spec", tracking_uri=store)  # fetched by the driver at run time
    checks.check(run_spec(str(source.adapter_dir), init_vectors="synthetic_a"), "spec")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / CONFIG_FILE).write_text((source.adapter_dir / CONFIG_FILE).read_text())
    cases = [
        (
            run_spec(str(tmp_path / "none")),
            "method.init_from: no adapter in .*adapter_config.json and adapter_model.safetensors missing",
        ),
        (run_spec(str(tmp_path / "half")), "method.init_from: .* adapter_model.safetensors missing"),
        (run_spec(str(source.adapter_dir), prompt_length=9), "method.prompt_length: 9, but the source adapter"),
        (run_spec(str(source.adapter_dir), init_vectors="rte"), "method.init_vectors: 'rte' is not a source task"),
        (run_spec(str(next(iter(source.teacher_dirs.values())))), "holds a prompt_tuning adapter"),
    ]
    for spec, message in cases:
        with pytest.raises(SpecError, match=message):
            checks.check(spec, "spec")


def test_shipped_source_spec_and_mpt_sweep_validate_and_search_lrs_at_fixed_l():
    source_spec_ = load_spec(ROOT / "search_spaces/sources/mpt_glue_t5_base.yaml")
    assert isinstance(source_spec_, SourceSpec) and source_spec_.method.prompt_length == 100
    checks.check(source_spec_, "source")
    sweep = load_spec(ROOT / "search_spaces/rte_mpt_fewshot.yaml")
    assert sweep.task.few_shot.k == 32 and sweep.task.few_shot.per == "total" and sweep.method.name == "mpt"
    plan, errors = plan_search(sweep, 768)
    assert not errors and plan.prompt_length == 100 and plan.rank == 1
    assert plan.adapter_params(100, 1) == 77_668
    import optuna

    trial = optuna.create_study().ask()
    params = plan.suggest(trial)
    assert set(params) == {"prompt_length", "lr_prompt", "lr_lowrank"} and trial.user_attrs["adapter_params"] == 77_668
    data = {**sweep.model_dump(mode="json", exclude_none=True), "search": {"rank": {"low": 1, "high": 4}}}
    with pytest.raises(SpecError, match="search.rank: mpt's rank is method.rank"):
        parse_spec(data)


def test_k_shot_takes_k_examples_per_class():
    splits = load_splits(TaskConfig(name="synthetic", synthetic_size=200, few_shot={"k": 5, "per": "class"}))
    assert sorted(e.target for e in splits.train) == ["0"] * 5 + ["1"] * 5
    with pytest.raises(ValueError, match="task.few_shot.k: 500 examples per class"):
        load_splits(TaskConfig(name="synthetic", synthetic_size=200, few_shot={"k": 500, "per": "class"}))


def test_cli_runs_the_source_stage(tmp_path):
    import yaml

    data = source_data(tmp_path, steps=2)
    data["source_tasks"] = [{"name": t, "synthetic_size": 100} for t in SOURCES]
    data["teacher"].update(steps=2, eval_every=2, warmup_steps=1)
    data["train"].update(eval_every=2, warmup_steps=1)
    path = tmp_path / "source.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["mpt-source", str(path), "--local"])
    assert result.exit_code == 0, result.output
    assert "source adapter:" in result.output and (tmp_path / "source" / "best" / CONFIG_FILE).is_file()
    bad = CliRunner().invoke(
        app, ["mpt-source", str(path), "--local", "--set", "train.batch_size=15", "--set", "mixing.strategy=balanced"]
    )
    assert bad.exit_code == 2
    diverged = CliRunner().invoke(app, ["mpt-source", str(path), "--local", "--set", "teacher.lr_prompt=1e30"])
    assert diverged.exit_code == 1 and "diverged: non-finite loss at step" in diverged.output  # said, no traceback
    assert "Traceback" not in diverged.output


@pytest.mark.parametrize("backbone", ["tiny-t5", "tiny-gpt2"])
def test_source_stage_runs_on_the_generative_families(tmp_path, backbone):
    data = source_data(tmp_path, backbone=backbone)
    for section in ("teacher", "train"):
        data[section].update(steps=3, eval_every=3, batch_size=4, max_new_tokens=2, warmup_steps=1)
    data["source_tasks"] = [{"name": t, "synthetic_size": 60} for t in SOURCES]
    result = train_source(parse_spec(data), reporter=lambda m, d: None)
    report = result.history[-1]
    assert all(report[f"{term}_{t}"] >= 0 for term in ("loss", "kl", "mse") for t in SOURCES)
    model = load_adapter(load_backbone(BackboneConfig(name=backbone)), result.adapter_dir)
    assert model.prefix_task_cols.shape == (2, 8, 1)


def test_the_teachers_lay_out_causal_inputs_as_the_student_does(tmp_path):
    """Distillation compares teacher and student position by position: both follow method.causal_rule."""
    from deptune.train.multitask import teacher_run

    data = source_data(tmp_path, backbone="tiny-gpt2")
    data["method"]["causal_rule"] = "official"
    spec = parse_spec(data)
    assert [teacher_run(spec, i).method.causal_rule for i in range(len(SOURCES))] == ["official", "official"]


# ----- the paper's source stage: proportional mixing, one lambda, encoder + decoder hidden states ----------
def test_proportional_mixing_draws_tasks_in_proportion_to_their_capped_sizes():
    from deptune.train.data import MixtureBatches, mixing_rates

    sizes = [1_000, 3_000, 400_000]  # the third is capped at 8,000
    rates = mixing_rates(sizes, size_cap=8_000)
    assert rates == pytest.approx([1 / 12, 3 / 12, 8 / 12])
    mixture = MixtureBatches(sizes, batch_size=32, seed=5, rates=rates)
    steps = [mixture.indices(step) for step in range(2_000)]
    drawn = [sum(len(step[k]) for step in steps) for k in range(3)]
    assert sum(drawn) == 2_000 * 32 and all(sum(map(len, step)) == 32 for step in steps)
    for count, rate in zip(drawn, rates):
        assert count / sum(drawn) == pytest.approx(rate, abs=0.01)
    first = [i for step in steps for i in step[0]][:1_000]
    assert sorted(first) == list(range(1_000))  # a task's examples come as epochs of its own shuffle
    again = MixtureBatches(sizes, batch_size=32, seed=5, rates=rates)
    assert [again.indices(s) for s in (0, 1, 2)] == steps[:3] and again.indices(1) == steps[1]  # seeded, replayable
    assert mixing_rates(sizes, None) == pytest.approx([s / sum(sizes) for s in sizes])  # no cap: raw sizes
    balanced = MixtureBatches(sizes, batch_size=32, seed=5)
    assert [len(part) for part in balanced.indices(0)] == [10, 10, 10]


def test_the_mpt_loss_equals_a_hand_computed_value_on_a_tiny_t5(tmp_path):
    """L_PLM + lambda * (L_logits + L_hidden): cross-entropy over label tokens, KL(teacher || student) over them,
    and the hidden-state MSE of the encoder's input tokens plus that of the decoder's target tokens."""
    from deptune.tasks.base import Example
    from deptune.tasks.catalog import get_task
    from deptune.train.data import encode, train_batch
    from deptune.train.loss import mpt_source_loss
    from deptune.train.multitask import SourceTask, task_terms

    bb = load_backbone(BackboneConfig(name="tiny-t5"))
    torch.manual_seed(0)
    teacher = build_model(bb, PromptTuningConfig(prompt_length=3, max_length=32, init="random")).eval()
    student = build_model(bb, MPTConfig(prompt_length=3, max_length=32, source_tasks=SOURCES, init="random"))
    with torch.no_grad():
        student.prefix_task_cols.normal_()
    task = get_task("synthetic_a")
    items = encode(
        [Example("sentence: good day", "1"), Example("sentence: a bad sad day it was", "0")], bb, task, 32, 8
    )
    batch = train_batch(items, bb)
    spec = source_spec(tmp_path, backbone="tiny-t5")
    source = SourceTask(task, items, items, teacher, {})
    for module in bb.model.modules():  # no dropout (task_terms trains the student), so both forwards agree
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):  # T5's attention dropout is functional
            module.dropout = 0.0
    terms = task_terms(student, 1, source, batch, spec)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    with torch.no_grad():
        t_out = teacher(ids, mask, labels=labels, output_hidden_states=True)
        with student.for_task(1):
            s_out = student(ids, mask, labels=labels, output_hidden_states=True)
    keep = labels != -100
    n_tokens = int(keep.sum())
    ce = (
        sum(
            -torch.log_softmax(s_out.logits[b, t], -1)[labels[b, t]]
            for b in range(2)
            for t in range(labels.shape[1])
            if keep[b, t]
        )
        / n_tokens
    )
    kl = (
        sum(
            (
                torch.softmax(t_out.logits[b, t], -1)
                * (torch.log_softmax(t_out.logits[b, t], -1) - torch.log_softmax(s_out.logits[b, t], -1))
            ).sum()
            for b in range(2)
            for t in range(labels.shape[1])
            if keep[b, t]
        )
        / n_tokens
    )
    enc_s, enc_t = s_out.encoder_last_hidden_state[:, 3:], t_out.encoder_last_hidden_state[:, 3:]
    enc = sum(
        ((enc_s[b, t] - enc_t[b, t]) ** 2).mean() for b in range(2) for t in range(ids.shape[1]) if mask[b, t]
    ) / int(mask.sum())
    dec_s, dec_t = s_out.decoder_hidden_states[-1], t_out.decoder_hidden_states[-1]
    dec = (
        sum(((dec_s[b, t] - dec_t[b, t]) ** 2).mean() for b in range(2) for t in range(labels.shape[1]) if keep[b, t])
        / n_tokens
    )
    torch.testing.assert_close(terms["loss"].detach(), ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["kl"].detach(), kl, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["mse"].detach(), enc + dec, rtol=1e-5, atol=1e-7)
    assert dec > 0 and enc > 0  # both stacks count
    total = mpt_source_loss(terms["loss"], terms["kl"], terms["mse"], 0.5).detach()
    torch.testing.assert_close(total, ce + 0.5 * (kl + enc + dec), rtol=1e-5, atol=1e-6)


def test_the_source_stage_reports_its_mixture_and_the_paper_metric(source):
    last = source.history[-1]
    assert last["mix_synthetic_a"] + last["mix_synthetic_b"] == pytest.approx(1.0)
    assert 0.35 < last["mix_synthetic_a"] < 0.65  # equal sizes: about half each
    assert last["paper_metric"] == pytest.approx(
        (last["eval_synthetic_a_accuracy"] + last["eval_synthetic_b_accuracy"]) / 2
    )
