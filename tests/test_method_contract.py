"""What every registered method owes the platform, checked in-process on every backbone family: its
learning-rate groups cover exactly its trainable tensors, its trainable count is its config's formula, a
step trains its tensors and never the frozen backbone, and a saved adapter loads back to the same outputs.
A new method is held to this by being registered: nothing here names one."""

from __future__ import annotations

import hashlib

import pytest
import torch

from deptune.backbones import TINY_BACKBONES, Backbone, BackboneConfig, head_names, load_backbone
from deptune.methods.adapters import build_model, load_adapter
from deptune.methods.catalog import get_method, methods
from deptune.methods.io import save_adapter

TEXTS = ["sentence: the movie was great and the food was good", "sentence: bad"]


def method_config(name: str):
    """The method at a small size: m = 4, s = 24, and r = 2 where the method has a rank."""
    config = get_method(name).config
    section = {"name": name, "prompt_length": 4, "max_length": 24}
    if "rank" in config.model_fields:
        section["rank"] = 2
    return config.model_validate(section)


def frozen_digest(backbone: Backbone) -> str:
    digest, head = hashlib.sha256(), set(head_names(backbone))
    for name, tensor in sorted(backbone.model.state_dict().items()):
        if name not in head:
            digest.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def outputs(model, backbone: Backbone) -> torch.Tensor:
    enc = backbone.tokenizer(TEXTS, padding=True, return_tensors="pt")
    kwargs = {"decoder_input_ids": torch.zeros(len(TEXTS), 1, dtype=torch.long)} if backbone.family == "seq2seq" else {}
    with torch.no_grad():
        return model(enc["input_ids"], enc["attention_mask"], **kwargs).logits


@pytest.fixture(scope="module", params=TINY_BACKBONES)
def family(request):
    return request.param


@pytest.mark.parametrize("name", sorted(methods()))
def test_every_registered_method_keeps_the_contract(name, family, tmp_path):
    check_contract(name, family, tmp_path)


def check_contract(name: str, family: str, tmp_path) -> None:
    """The contract, for one method on one tiny backbone (a method defined in a test calls it too)."""
    torch.manual_seed(0)
    backbone = load_backbone(BackboneConfig(name=family, tiny={"dropout": 0.0}))
    config = method_config(name)
    model = build_model(backbone, config)

    groups = model.parameter_groups()
    grouped = [p for params in groups.values() for p in params]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len({id(p) for p in grouped}) == len(grouped), "a tensor in two learning-rate groups"
    assert {id(p) for p in grouped} == {id(p) for p in trainable}, "groups must cover exactly the trainable tensors"

    declared = type(config).learning_rate_groups()
    assert {g for g, params in groups.items() if params} <= set(declared), "a group the config does not declare"
    head = sum(p.numel() for p in groups.get("head", []))
    assert model.trainable_parameter_count() == config.adapter_params({}, backbone.hidden_size) + head

    before = frozen_digest(backbone)
    trained = {key: tensor.detach().clone() for key, tensor in model.method_tensors().items()}
    optimizer = torch.optim.SGD([{"params": params, "lr": 0.5} for params in groups.values() if params])
    model.train()
    for _ in range(2):  # two steps: a zero-initialised factor (DePT's B) moves its partner from the second on
        enc = backbone.tokenizer(TEXTS, padding=True, return_tensors="pt")
        labels = enc["input_ids"].clone() if backbone.family != "encoder" else torch.tensor([0, 1])
        if backbone.family == "causal":  # the first tokens are the source (-100), the rest the answer
            labels[:, :3] = -100
        loss = model(enc["input_ids"], enc["attention_mask"], labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert frozen_digest(backbone) == before, "the frozen backbone changed"
    for key, tensor in model.method_tensors().items():
        assert not torch.equal(tensor.detach(), trained[key]), f"{key} did not train"

    model.eval()
    expected = outputs(model, backbone)
    save_adapter(model, tmp_path, family, task="synthetic")
    fresh = load_backbone(BackboneConfig(name=family, tiny={"dropout": 0.0}))
    loaded = load_adapter(fresh, tmp_path).eval()
    assert type(loaded.config) is type(config) and loaded.config == config
    torch.testing.assert_close(outputs(loaded, fresh), expected, rtol=0, atol=0)
