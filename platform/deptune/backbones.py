"""Frozen Hugging Face backbones by family, plus tiny offline ones for tests and the demo.

`name` is a hub id or a local folder (loaded with `from_pretrained`), or one of `TINY_BACKBONES`: a
2-layer model of that architecture built from a config (random weights, seeded, so every process builds
the same one) with a word-level tokenizer over the built-in synthetic task's words.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from deptune.spec_base import StrictModel, rng_seed
from deptune.tasks.synthetic import WORDS

if TYPE_CHECKING:  # transformers' model code takes seconds to import: only the processes that build a model pay
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

Family = Literal["seq2seq", "causal", "encoder"]
TINY_BACKBONES = ("tiny-t5", "tiny-gpt2", "tiny-llama", "tiny-bert")
_T5 = {"model_type": "t5", "is_encoder_decoder": True}
_BERT = {"model_type": "bert", "max_position_embeddings": 512}
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    **{
        name: {**_T5, "d_model": d}
        for name, d in {
            "t5-small": 512,
            "t5-base": 768,
            "t5-large": 1024,
            "google-t5/t5-small": 512,
            "google-t5/t5-base": 768,
            "google-t5/t5-large": 1024,
            "google/t5-v1_1-base": 768,
            "google/t5-v1_1-large": 1024,
            "google/flan-t5-base": 768,
            "google/flan-t5-large": 1024,
        }.items()
    },
    **{name: {"model_type": "gpt2", "n_embd": 768, "n_positions": 1024} for name in ("gpt2", "openai-community/gpt2")},
    **{name: {**_BERT, "hidden_size": 768} for name in ("bert-base-uncased", "google-bert/bert-base-uncased")},
    "sentence-transformers/all-MiniLM-L6-v2": {**_BERT, "hidden_size": 384},
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": {"model_type": "llama", "hidden_size": 2048, "max_position_embeddings": 2048},
    "meta-llama/Llama-3.2-1B": {"model_type": "llama", "hidden_size": 2048, "max_position_embeddings": 131072},
    "Qwen/Qwen2.5-0.5B": {"model_type": "qwen2", "hidden_size": 896, "max_position_embeddings": 32768},
}
"""What the checks read from a config (d, positions, family) for the backbones our specs name, so `deptune
validate` checks budgets and positions offline without the hub's config in the cache."""
HIDDEN_SIZE_KEYS = ("d_model", "hidden_size", "n_embd", "dim")
POSITION_KEYS = ("max_position_embeddings", "n_positions")
CAUSAL_TYPES = {"gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi", "phi3", "gpt_neox", "opt"}
ENCODER_TYPES = {
    "bert",
    "roberta",
    "distilbert",
    "albert",
    "electra",
    "deberta",
    "deberta-v2",
    "xlm-roberta",
    "mpnet",
    "camembert",
    "modernbert",
}
MAX_NAME = 4096
"""The longest backbone name: PATH_MAX (a hub id has at most 96 characters)."""
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""What `from_pretrained` loads a local folder's weights from (deptune never passes from_tf / from_flax)."""
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.txt",
    "vocab.json",
    "sentencepiece.bpe.model",
)


class TinySize(StrictModel):
    hidden_size: PositiveInt = 64
    layers: PositiveInt = 2
    heads: PositiveInt = 4
    ff_size: PositiveInt = 128
    max_positions: PositiveInt = 512
    init_std: float | None = Field(
        None,
        gt=0,
        description="weight init std; default 1/sqrt(hidden_size), so a frozen random network still mixes its tokens",
    )
    dropout: float = Field(0.1, ge=0, lt=1)
    seed: int = Field(0, description="the random weights' seed (any integer)")


class BackboneConfig(StrictModel):
    name: str = Field(min_length=1, description="hub id, local folder, or one of " + ", ".join(TINY_BACKBONES))
    family: Family | None = Field(None, description="inferred from the model config when omitted")
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    tiny: TinySize = TinySize()

    @field_validator("name")
    @classmethod
    def _not_absurdly_long(cls, name: str) -> str:
        if len(name) > MAX_NAME:
            raise ValueError(f"{len(name):,} characters, longer than any local path ({MAX_NAME:,}) or hub id (96)")
        return name

    @model_validator(mode="after")
    def _tiny_shape_builds(self) -> BackboneConfig:
        if self.name in TINY_BACKBONES and (problem := tiny_shape_problem(self.name, self.tiny)):
            raise ValueError(f"backbone.tiny.heads: {problem}")
        return self


def tiny_shape_problem(name: str, size: TinySize) -> str | None:
    """Why transformers would refuse to build this tiny model's attention (None if it builds)."""
    d, heads = size.hidden_size, size.heads
    if name == "tiny-t5":
        return None if heads <= d else f"{heads} heads of a {d}-wide model leave each head no width (d // heads = 0)"
    if d % heads:
        return f"{heads} does not divide backbone.tiny.hidden_size ({d}): each head is hidden_size / heads wide"
    if name == "tiny-llama":
        if heads % max(1, heads // 2):
            return (
                f"tiny-llama has heads // 2 key/value heads, which must divide the {heads} heads: use 1, 3 or an "
                f"even number"
            )
        if (d // heads) % 2:
            return f"tiny-llama's rotary embeddings need an even head width, and {d} / {heads} = {d // heads}"
    return None


@dataclass
class Backbone:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    family: Family
    name: str
    revision: str | None

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim


def head_names(backbone: Backbone) -> list[str]:
    """An encoder's classification head: every parameter outside the base model (BERT: `classifier.*`),
    the one part of a backbone that trains; none for other families."""
    if backbone.family != "encoder":
        return []
    prefix = backbone.model.base_model_prefix + "."
    return [n for n, _ in backbone.model.named_parameters() if not n.startswith(prefix)]


def infer_family(config: PretrainedConfig) -> Family:
    return family_of(config.to_dict())


def family_of(config: dict[str, Any]) -> Family:
    """seq2seq for encoder-decoders, causal for *ForCausalLM / *LMHeadModel, encoder otherwise."""
    return declared_family(config) or "encoder"


def declared_family(config: dict[str, Any]) -> Family | None:
    """The family a config says it is (an encoder-decoder, a causal LM's architecture or model type, an
    encoder's), or None when it says nothing a `backbone.family` could contradict."""
    if config.get("is_encoder_decoder"):
        return "seq2seq"
    architectures = config.get("architectures") or []
    if (
        any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
        or config.get("model_type") in CAUSAL_TYPES
    ):
        return "causal"
    if architectures or config.get("model_type") in ENCODER_TYPES:
        return "encoder"
    return None


def load_backbone(cfg: BackboneConfig, num_labels: int = 2) -> Backbone:
    """Load (or build) the backbone, frozen; `num_labels` sizes an encoder's head (1 = regression)."""
    if cfg.name in TINY_BACKBONES:
        model, tokenizer, family = _build_tiny(cfg.name, cfg.tiny, num_labels)
    else:
        model, tokenizer, family = _load_pretrained(cfg, num_labels)
    if cfg.family is not None and cfg.family != family:
        raise ValueError(f"backbone.family: {cfg.name} is a {family} model, not {cfg.family}")
    import torch

    model.to(getattr(torch, cfg.dtype))
    for param in model.parameters():
        param.requires_grad_(False)
    return Backbone(model=model, tokenizer=tokenizer, family=family, name=cfg.name, revision=cfg.revision)


def _load_pretrained(cfg: BackboneConfig, num_labels: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Family]:
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    config = AutoConfig.from_pretrained(cfg.name, revision=cfg.revision)
    family = cfg.family or infer_family(config)
    tokenizer = AutoTokenizer.from_pretrained(cfg.name, revision=cfg.revision)
    if family == "seq2seq":
        model = AutoModelForSeq2SeqLM.from_pretrained(cfg.name, revision=cfg.revision)
    elif family == "causal":
        model = AutoModelForCausalLM.from_pretrained(cfg.name, revision=cfg.revision)
        if tokenizer.pad_token is None:  # GPT-2 / LLaMA ship without one; padding is masked anyway
            tokenizer.pad_token = tokenizer.eos_token
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            cfg.name, revision=cfg.revision, num_labels=num_labels
        )
    return model, tokenizer, family


_SPECIALS = ["<pad>", "</s>", "<unk>", "<s>", "[CLS]", "[SEP]", "[MASK]"]
_EXTRA_WORDS = [
    "sentence",
    "sentence1",
    "sentence2",
    "question",
    "question1",
    "question2",
    "premise",
    "hypothesis",
    "passage",
    "answer",
    "paragraph",
    "word",
    "text",
    "true",
    "false",
    "yes",
    "no",
    ":",
    ".",
    ",",
    "?",
    "!",
    "'",
    "-",
] + [str(i) for i in range(10)]


def tiny_tokenizer(family: Family) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the synthetic task's words (others map to <unk>): fast and offline."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(_SPECIALS + _EXTRA_WORDS + list(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(True)])
    if family == "seq2seq":
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    elif family == "encoder":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=1_000_000,
    )


def _build_tiny(name: str, size: TinySize, num_labels: int) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, Family]:
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    family: Family = {"tiny-t5": "seq2seq", "tiny-bert": "encoder"}.get(name, "causal")
    tokenizer = tiny_tokenizer(family)
    vocab, d = len(tokenizer), size.hidden_size
    std = size.init_std or d**-0.5
    common = dict(vocab_size=vocab, pad_token_id=0, eos_token_id=1, bos_token_id=3)
    p = size.dropout
    import torch

    torch.manual_seed(rng_seed(size.seed))
    if name == "tiny-t5":
        model = T5ForConditionalGeneration(
            T5Config(
                d_model=d,
                d_kv=d // size.heads,
                d_ff=size.ff_size,
                num_layers=size.layers,
                num_heads=size.heads,
                decoder_start_token_id=0,
                initializer_factor=std * d**0.5,
                dropout_rate=p,
                **common,
            )
        )
    elif name == "tiny-gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                n_embd=d,
                n_layer=size.layers,
                n_head=size.heads,
                n_inner=size.ff_size,
                n_positions=size.max_positions,
                initializer_range=std,
                resid_pdrop=p,
                embd_pdrop=p,
                attn_pdrop=p,
                **common,
            )
        )
    elif name == "tiny-llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=d,
                intermediate_size=size.ff_size,
                num_hidden_layers=size.layers,
                num_attention_heads=size.heads,
                num_key_value_heads=max(1, size.heads // 2),
                max_position_embeddings=size.max_positions,
                initializer_range=std,
                attention_dropout=p,
                **common,
            )
        )
    else:
        model = BertForSequenceClassification(
            BertConfig(
                hidden_size=d,
                num_hidden_layers=size.layers,
                num_attention_heads=size.heads,
                intermediate_size=size.ff_size,
                max_position_embeddings=size.max_positions,
                num_labels=num_labels,
                initializer_range=std,
                hidden_dropout_prob=p,
                attention_probs_dropout_prob=p,
                **common,
            )
        )
    model.config.name_or_path = name
    return model, tokenizer, family


# ----- facts about a backbone without building it (checks, the search plan) --------------------------------
class ConfigUnreadable(ValueError):
    """A config.json that is there but holds no JSON object (the message names the file)."""


def _is(path: Path, kind: str = "file") -> bool:
    """`path.is_file()` / `is_dir()`, False for a name the OS cannot even look up (too long, bad bytes)."""
    try:
        return path.is_file() if kind == "file" else path.is_dir()
    except (OSError, ValueError):
        return False


def is_local(name: str) -> bool:
    """The backbone's name is a local path (it looks like one, or it exists), not a hub id."""
    return name.startswith(("/", "./", "../", "~")) or _is(Path(name), "dir") or _is(Path(name))


def hub_id_problem(name: str) -> str | None:
    """Why `name` cannot be a Hugging Face hub id (None when it can be one)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id  # light, unlike transformers

    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        return str(exc).split(". ")[0].rstrip(".")
    return None


def read_config(path: Path) -> dict[str, Any]:
    """A config.json as a dict; not UTF-8 JSON, or JSON but no object, is a `ConfigUnreadable` naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigUnreadable(f"{path} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigUnreadable(f"{path} holds a JSON {type(data).__name__}, not a config object")
    return data


def model_config(backbone: BackboneConfig, online: bool = False) -> dict[str, Any] | None:
    """The backbone's config as a dict: a tiny one's, a local folder's, the local HF cache's, (online) the
    hub's, else what `KNOWN_CONFIGS` knows; None when none of them has it. A config.json that is there but
    unreadable raises `ConfigUnreadable`."""
    if backbone.name in TINY_BACKBONES:
        t = backbone.tiny
        model_type = {"tiny-t5": "t5", "tiny-gpt2": "gpt2", "tiny-llama": "llama", "tiny-bert": "bert"}[backbone.name]
        return {
            "hidden_size": t.hidden_size,
            "model_type": model_type,
            "is_encoder_decoder": model_type == "t5",
            "max_position_embeddings": None if model_type == "t5" else t.max_positions,
        }
    config_file = Path(backbone.name) / "config.json"
    if _is(config_file):
        return read_config(config_file)
    if is_local(backbone.name):
        return None
    from huggingface_hub import try_to_load_from_cache  # light, unlike transformers: validate stays fast

    try:
        cached = try_to_load_from_cache(backbone.name, "config.json", revision=backbone.revision)
    except ValueError:  # HFValidationError: not a hub repo id
        cached = None
    if isinstance(cached, str):
        return read_config(Path(cached))
    if online and hub_id_problem(backbone.name) is None:
        try:
            from transformers import AutoConfig

            return AutoConfig.from_pretrained(backbone.name, revision=backbone.revision).to_dict()
        except (OSError, ValueError):
            pass
    known = KNOWN_CONFIGS.get(backbone.name)
    return dict(known) if known else None


def hidden_size(backbone: BackboneConfig, config: dict[str, Any] | None = None) -> int | None:
    """d from the backbone's config or our table; None if unknown offline."""
    config = config if config is not None else model_config(backbone)
    for source in (config or {}, KNOWN_CONFIGS.get(backbone.name, {})):
        if found := next((source[k] for k in HIDDEN_SIZE_KEYS if isinstance(source.get(k), int)), None):
            return found
    return None


def position_limit(backbone: BackboneConfig, config: dict[str, Any] | None = None) -> int | None:
    """The most positions the backbone embeds (prompt + input, + answer for causal models); None for
    relative-position encoder-decoders (T5) and backbones whose config is unknown offline."""
    config = config if config is not None else model_config(backbone)
    if not config or config.get("is_encoder_decoder"):
        return None
    return next((config[k] for k in POSITION_KEYS if isinstance(config.get(k), int)), None)


def missing_files(folder: Path) -> list[str]:
    """What `from_pretrained` needs of a local folder and does not find: weights, a tokenizer."""
    names = {p.name for p in folder.iterdir()} if _is(folder, "dir") else set()
    missing = []
    if not names & set(WEIGHT_FILES):
        missing.append(f"weights ({' or '.join(WEIGHT_FILES[::2])})")
    if not names & set(TOKENIZER_FILES):
        missing.append(f"tokenizer files ({', '.join(TOKENIZER_FILES)})")
    return missing
