"""DePT and PT semantics on tiny offline backbones of every family."""

from __future__ import annotations

import json
import math

import pytest
import torch

from deptune.backbones import TINY_BACKBONES, BackboneConfig, TinySize, load_backbone
from deptune.methods.adapters import build_model, load_adapter
from deptune.methods.budget import dept_count, rank_for_budget
from deptune.methods.dept.config import DePTConfig
from deptune.methods.io import save_adapter
from deptune.methods.prompt_tuning.config import PromptTuningConfig
from deptune.methods.record import CONFIG_FILE, WEIGHTS_FILE
from deptune.train.config import TrainConfig
from deptune.train.loop import make_optimizer

TEXTS = ["sentence: the movie was great and the food was good", "sentence: bad"]


@pytest.fixture(scope="module", params=TINY_BACKBONES)
def backbone(request):
    return load_backbone(BackboneConfig(name=request.param))


def inputs(backbone, texts=TEXTS, left=False):
    backbone.tokenizer.padding_side = "left" if left else "right"
    enc = backbone.tokenizer(texts, padding=True, return_tensors="pt")
    backbone.tokenizer.padding_side = "right"
    return enc["input_ids"], enc["attention_mask"]


def logits(model, backbone, **kw):
    ids, mask = inputs(backbone, **kw)
    if backbone.family == "seq2seq":  # one decoder step from the start token
        return model.backbone(
            inputs_embeds=model._prompted_inputs(ids, mask)[0],
            attention_mask=model._prompted_inputs(ids, mask)[1],
            decoder_input_ids=torch.zeros(len(ids), 1, dtype=torch.long),
        ).logits
    return model(ids, mask).logits


def dept(m=6, r=4, s=32, **kw):
    return DePTConfig(prompt_length=m, rank=r, max_length=s, **kw)


# ----- budget ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m, r, s", [(60, 30, 256), (80, 15, 256), (40, 45, 256), (60, 24, 512)])
def test_budget_table_of_the_paper(m, r, s):
    plan = rank_for_budget(budget_tokens=100, hidden_size=768, max_length=s, prompt_length=m)
    assert plan.rank == r
    assert plan.trainable == dept_count(m, r, 768, s) == 76_800 == plan.budget
    assert plan.trainable == plan.budget


def test_budget_rounds_rank_down_and_never_exceeds():
    plan = rank_for_budget(100, 512, 256, 50)  # (100-50)*512 / 768 = 33.3
    assert plan.rank == 33 and plan.trainable == 50 * 512 + 33 * 768 < plan.budget


@pytest.mark.parametrize(
    "args, message",
    [
        ((100, 768, 256, 100), "need m < l"),
        ((100, 768, 256, 120), "need m < l"),
        ((100, 8, 4096, 99), "rank r=0"),
        ((100, 768, 256, 0), "prompt_length must be >= 1"),
    ],
)
def test_budget_infeasible_is_an_error(args, message):
    with pytest.raises(ValueError, match=message):
        rank_for_budget(*args)


def test_dept_config_derives_rank_from_budget_and_rejects_a_contradiction():
    assert DePTConfig(prompt_length=60, budget=100, max_length=256).resolve(768).rank == 30
    with pytest.raises(ValueError, match="does not match budget"):
        DePTConfig(prompt_length=60, budget=100, rank=10, max_length=256).resolve(768)
    with pytest.raises(ValueError, match="give rank"):
        DePTConfig(prompt_length=60)


# ----- trainable parameters --------------------------------------------------------------------------------
def test_trainable_count_matches_the_formula(backbone):
    d = backbone.hidden_size
    head = (
        sum(
            p.numel()
            for n, p in backbone.model.named_parameters()
            if not n.startswith(backbone.model.base_model_prefix + ".")
        )
        if backbone.family == "encoder"
        else 0
    )
    pt = build_model(backbone, PromptTuningConfig(prompt_length=10, max_length=32))
    assert pt.trainable_parameter_count() == 10 * d + head
    model = build_model(backbone, dept(m=6, r=4, s=32))
    assert model.trainable_parameter_count() == 6 * d + 4 * (32 + d) + head
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {"prompt_embeddings", "lora_embedding_A", "lora_embedding_B"} | {
        f"backbone.{n}" for n in model.head_names
    }
    assert trainable == expected
    assert (backbone.family == "encoder") == bool(model.head_names)


def test_budgeted_dept_matches_pt_exactly_when_divisible():
    bb = load_backbone(BackboneConfig(name="tiny-t5", tiny=TinySize(hidden_size=64)))
    # l=20, m=12, s=64, d=64: r = 8*64/128 = 4 exactly
    model = build_model(bb, DePTConfig(prompt_length=12, budget=20, max_length=64))
    assert model.config.rank == 4
    assert model.trainable_parameter_count() == 20 * 64


# ----- DePT mechanics --------------------------------------------------------------------------------------
def test_init_of_A_and_B():
    bb = load_backbone(BackboneConfig(name="tiny-t5"))
    model = build_model(bb, dept(m=6, r=16, s=256))
    A, B = model.lora_embedding_A, model.lora_embedding_B
    assert A.shape == (256, 16) and B.shape == (16, 64)
    assert torch.count_nonzero(B) == 0
    bound = 1 / math.sqrt(16)
    assert A.abs().max() <= bound and A.abs().max() > 0.9 * bound  # U(-1/sqrt(r), 1/sqrt(r))
    assert model.scaling == pytest.approx(8 / math.sqrt(16))  # alpha / sqrt(r), not alpha / r


def test_step_zero_dept_equals_pt_with_the_same_prompt(backbone):
    torch.manual_seed(0)
    d_model = build_model(backbone, dept(m=6, r=4, s=32)).eval()
    p_model = build_model(backbone, PromptTuningConfig(prompt_length=6, max_length=32)).eval()
    with torch.no_grad():
        p_model.prompt_embeddings.copy_(d_model.prompt_embeddings)
    torch.testing.assert_close(logits(d_model, backbone), logits(p_model, backbone), rtol=0, atol=0)
    with torch.no_grad():
        d_model.lora_embedding_B.normal_()
    assert not torch.allclose(logits(d_model, backbone), logits(p_model, backbone))


def test_update_is_added_position_wise_and_sliced_for_short_inputs():
    bb = load_backbone(BackboneConfig(name="tiny-t5"))
    model = build_model(bb, dept(m=6, r=4, s=32))
    torch.nn.init.normal_(model.lora_embedding_B)
    update = model.scaling * model.lora_embedding_A @ model.lora_embedding_B
    for left in (False, True):
        ids, mask = inputs(bb, left=left)
        base = model.word_embeddings(ids)
        out = model.update_embeddings(ids, base, mask, mask)
        for row in range(len(ids)):
            real = mask[row].bool()
            n = int(real.sum())
            torch.testing.assert_close(out[row][real] - base[row][real], update[:n])  # rows 0..n-1, any padding
            torch.testing.assert_close(out[row][~real], base[row][~real])  # padding untouched
    embeds, _ = model._prompted_inputs(ids, mask)
    torch.testing.assert_close(embeds[:, :6], model.prompt_embeddings.expand(2, -1, -1))  # prompt gets no update


# ----- decoder-only: the official code's layout (causal_rule: official) -------------------------------------
def official_causal_logits(model, bb, ids, mask):
    """The official code's causal DePT forward, written out (ZhengxiangShi/DePT train.py 348-361 and peft_model.py
    827-841): every sequence left-padded to exactly s, scaling * (A @ B) added to all s positions, the prompt
    prepended with ones in the mask, and the backbone's default positions (0 .. m + s - 1)."""
    s, m, pad = model.config.max_length, model.config.prompt_length, bb.tokenizer.pad_token_id
    real = [row[keep.bool()] for row, keep in zip(ids, mask)]
    padded = torch.stack([torch.cat([torch.full((s - len(r),), pad), r]) for r in real])
    padded_mask = torch.stack([torch.cat([torch.zeros(s - len(r)), torch.ones(len(r))]) for r in real]).long()
    embeds = bb.model.get_input_embeddings()(padded) + model.scaling * (model.lora_embedding_A @ model.lora_embedding_B)
    prompt = model.prompt_embeddings.expand(len(ids), -1, -1)
    full_mask = torch.cat([torch.ones(len(ids), m, dtype=torch.long), padded_mask], dim=1)
    return bb.model(inputs_embeds=torch.cat([prompt, embeds], dim=1), attention_mask=full_mask).logits


@pytest.mark.parametrize("left", [False, True])
def test_official_causal_forward_matches_the_official_position_rule(left):
    """Rows and positions count back from s (token i of n: row s - n + i, position m + s - n + i), the answer
    included, without padding every sequence to s."""
    bb = load_backbone(BackboneConfig(name="tiny-gpt2"))
    torch.manual_seed(0)
    m, s = 5, 24
    model = build_model(bb, dept(m=m, r=4, s=s, causal_rule="official")).eval()
    with torch.no_grad():
        model.lora_embedding_B.normal_()
    ids, mask = inputs(bb, left=left)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-3] = -100  # an answer at the end: the official rule updates it too
    with torch.no_grad():
        ours, official = model(ids, mask, labels=labels).logits, official_causal_logits(model, bb, ids, mask)
    for row, keep in enumerate(mask.bool()):
        n = int(keep.sum())
        torch.testing.assert_close(ours[row, :m], official[row, :m], rtol=0, atol=1e-6)  # the prompt
        torch.testing.assert_close(ours[row, m:][keep], official[row, m + s - n :], rtol=0, atol=1e-6)
    aligned = build_model(bb, dept(m=m, r=4, s=s)).eval()
    aligned.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(aligned(ids, mask, labels=labels).logits, ours, atol=1e-3)  # the rules differ


def test_official_causal_rows_count_back_from_s_and_generation_matches_the_official():
    bb = load_backbone(BackboneConfig(name="tiny-gpt2"))
    torch.manual_seed(0)
    model = build_model(bb, dept(m=4, r=4, s=32, causal_rule="official")).eval()
    torch.nn.init.normal_(model.lora_embedding_B)
    update = model.scaling * model.lora_embedding_A @ model.lora_embedding_B
    for left in (False, True):
        ids, mask = inputs(bb, left=left)
        base = model.word_embeddings(ids)
        out = model.update_embeddings(ids, base, mask, mask)
        for row in range(len(ids)):
            real, n = mask[row].bool(), int(mask[row].sum())
            torch.testing.assert_close(out[row][real] - base[row][real], update[32 - n :])  # rows s - n .. s - 1
            torch.testing.assert_close(out[row][~real], base[row][~real])
    # The official generation (peft_model.py 854-952): the s-padded input updated on its first step, positions
    # from the attention mask (Hugging Face's generate), greedy.
    ids, mask = inputs(bb, left=True)
    real = [row[keep.bool()] for row, keep in zip(ids, mask)]
    padded = torch.stack([torch.cat([torch.full((32 - len(r),), bb.tokenizer.pad_token_id), r]) for r in real])
    padded_mask = torch.stack(
        [torch.cat([torch.ones(4), torch.zeros(32 - len(r)), torch.ones(len(r))]) for r in real]
    ).long()
    with torch.no_grad():
        embeds = torch.cat([model.prompt_embeddings.expand(2, -1, -1), model.word_embeddings(padded) + update], dim=1)
        official = bb.model.generate(
            inputs_embeds=embeds,
            attention_mask=padded_mask,
            max_new_tokens=4,
            do_sample=False,
            pad_token_id=bb.tokenizer.pad_token_id,
        )
    ours = model.generate(ids, mask, max_new_tokens=4, pad_token_id=bb.tokenizer.pad_token_id)
    assert ours.tolist() == official.tolist() and ours.shape == (2, 4)


def test_causal_rule_official_is_for_decoder_only_backbones(tmp_path):
    from deptune.checks import check
    from deptune.spec_base import SpecError
    from deptune.specs import parse_spec

    def spec(name):
        return parse_spec(
            {
                "backbone": {"name": name},
                "task": {"name": "synthetic"},
                "method": {"name": "prompt_tuning", "prompt_length": 4, "max_length": 32, "causal_rule": "official"},
                "train": {"output_dir": str(tmp_path / name)},
            }
        )

    check(spec("tiny-gpt2"), "spec", local=True)
    with pytest.raises(
        SpecError,
        match="method.causal_rule: official is the official code's decoder-only layout, "
        "but tiny-t5 is a seq2seq backbone",
    ):
        check(spec("tiny-t5"), "spec", local=True)
    with pytest.raises(SpecError, match="method.causal_rule: Input should be 'aligned' or 'official'"):
        parse_spec(
            {
                "backbone": {"name": "tiny-gpt2"},
                "task": {"name": "synthetic"},
                "method": {"name": "dept", "rank": 2, "causal_rule": "left"},
            }
        )


def test_inputs_longer_than_s_are_rejected(backbone):
    model = build_model(backbone, dept(m=4, r=2, s=5))
    ids, mask = inputs(backbone)
    with pytest.raises(ValueError, match="exceeds the adapter's max_length s=5"):
        model(ids, mask)


def test_one_step_moves_each_group_under_its_own_learning_rate():
    bb = load_backbone(BackboneConfig(name="tiny-t5"))
    torch.manual_seed(0)
    model = build_model(bb, dept(m=6, r=4, s=32))
    before = {k: v.detach().clone() for k, v in model.method_tensors().items()}
    optimizer = make_optimizer(model, TrainConfig(lr_prompt=0.3, lr_lowrank=1e-3, warmup_steps=0, steps=10))
    assert [g["lr"] for g in optimizer.param_groups] == [0.3, 1e-3]
    ids, mask = inputs(bb)
    labels = bb.tokenizer(["1", "0"], return_tensors="pt")["input_ids"]
    model(ids, mask, labels=labels).loss.backward()
    optimizer.step()
    moved = {k: (v.detach() - before[k]).abs() for k, v in model.method_tensors().items()}
    # Adam's first step moves every element with a gradient by ~lr (eps=1e-6 is negligible)
    assert moved["prompt_embeddings"].max() == pytest.approx(0.3, rel=1e-3)
    assert moved["lora_embedding_B"].max() == pytest.approx(1e-3, rel=1e-3)
    assert moved["lora_embedding_A"].max() == 0  # B=0 at step 0 gives A no gradient yet
    n_used = int(mask.sum(-1).max())
    assert torch.count_nonzero(moved["lora_embedding_B"]) > 0
    assert moved["lora_embedding_A"][n_used:].max() == 0


# ----- init ------------------------------------------------------------------------------------------------
def test_prompt_inits():
    bb = load_backbone(BackboneConfig(name="tiny-t5"))
    emb = bb.model.get_input_embeddings().weight
    text = build_model(bb, PromptTuningConfig(prompt_length=5, init="text", init_text="good bad"))
    ids = bb.tokenizer("good bad")["input_ids"]  # the official code's tokenisation: T5's </s> kept
    assert len(ids) == 3 and ids[-1] == bb.tokenizer.eos_token_id
    torch.testing.assert_close(text.prompt_embeddings.detach(), emb[[ids[0], ids[1], ids[2], ids[0], ids[1]]])
    sampled = build_model(bb, PromptTuningConfig(prompt_length=5, init="sample_vocab")).prompt_embeddings.detach()
    assert all(any(torch.equal(row, v) for v in emb) for row in sampled)
    torch.manual_seed(0)
    random = build_model(bb, PromptTuningConfig(prompt_length=500, init="random")).prompt_embeddings.detach()
    assert random.std().item() == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="init_text: required"):
        PromptTuningConfig(init="text")


# ----- save / load / transfer ------------------------------------------------------------------------------
def test_save_load_round_trip_gives_identical_logits(backbone, tmp_path):
    torch.manual_seed(1)
    model = build_model(backbone, dept(m=6, r=4, s=32)).eval()
    with torch.no_grad():
        model.lora_embedding_B.normal_()
        for name in model.head_names:
            dict(backbone.model.named_parameters())[name].add_(1.0)
    expected = logits(model, backbone)
    save_adapter(model, tmp_path, "tiny", task="synthetic")
    record = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert {record[k] for k in ("method", "prompt_length", "rank", "max_length", "hidden_size")} >= {
        "dept",
        6,
        4,
        32,
        64,
    }
    assert (tmp_path / WEIGHTS_FILE).stat().st_size < 50_000  # adapter only, never the backbone
    fresh = load_backbone(BackboneConfig(name=backbone.name))
    if backbone.family == "encoder":  # a fresh head differs until the saved one is loaded
        assert not torch.allclose(fresh.model.classifier.weight, backbone.model.classifier.weight)
    loaded = load_adapter(fresh, tmp_path).eval()
    torch.testing.assert_close(logits(loaded, fresh), expected, rtol=0, atol=0)


def test_load_refuses_another_hidden_size_and_broken_files(tmp_path):
    bb = load_backbone(BackboneConfig(name="tiny-t5"))
    save_adapter(build_model(bb, dept()), tmp_path, "tiny-t5")
    wider = load_backbone(BackboneConfig(name="tiny-t5", tiny=TinySize(hidden_size=96)))
    with pytest.raises(ValueError, match="hidden size d=64.*d=96"):
        load_adapter(wider, tmp_path)
    from safetensors.torch import load_file, save_file

    tensors = load_file(tmp_path / WEIGHTS_FILE)
    save_file({"prompt_embeddings": tensors["prompt_embeddings"]}, tmp_path / WEIGHTS_FILE)
    with pytest.raises(ValueError, match=r"missing \['lora_embedding_A', 'lora_embedding_B'\]"):
        load_adapter(bb, tmp_path)
    tensors["lora_embedding_B"] = torch.zeros(3, 64)
    save_file(tensors, tmp_path / WEIGHTS_FILE)
    with pytest.raises(ValueError, match=r"lora_embedding_B: file \(3, 64\) vs model \(4, 64\)"):
        load_adapter(bb, tmp_path)
    with pytest.raises(FileNotFoundError, match="adapter_config.json is missing"):
        load_adapter(bb, tmp_path / "nowhere")


def test_transfer_initialises_prompt_and_low_rank_pair_but_not_the_head(tmp_path):
    bb = load_backbone(BackboneConfig(name="tiny-bert"))
    source = build_model(bb, dept())
    with torch.no_grad():
        source.lora_embedding_B.normal_()
        bb.model.classifier.weight.add_(5.0)
    save_adapter(source, tmp_path, "tiny-bert")
    target_bb = load_backbone(BackboneConfig(name="tiny-bert"), num_labels=3)
    target = build_model(target_bb, dept(init_from=tmp_path))
    for key, value in source.method_tensors().items():
        torch.testing.assert_close(target.method_tensors()[key], value)
    assert target_bb.model.classifier.weight.shape == (3, 64)
    with pytest.raises(ValueError, match="shape mismatch"):
        build_model(bb, dept(m=7, init_from=tmp_path))


def test_a_method_name_registered_twice_is_an_error():
    from typing import Literal

    from deptune.methods.catalog import get_method, register

    class OtherDePT(DePTConfig):
        name: Literal["dept"] = "dept"

    dept = get_method("dept")
    register(dept.config, dept.model)  # the same method again (a Ray worker's restore) is no conflict
    with pytest.raises(ValueError, match="a method named 'dept' is registered already \\(DePTConfig\\)"):
        register(OtherDePT, dept.model)
    assert get_method("dept").config is DePTConfig
