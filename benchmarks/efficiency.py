"""DePT vs PT at equal trainable parameters: train step time, peak memory, inference latency.

T5 shapes with random weights (no download), inputs padded to s=256 tokens, PT with l=100 prompt tokens
vs DePT with m=60 and the rank the same budget allows (T5-Base: r=30, exactly 76,800 parameters both).
Each (shape, method) cell runs in its own child process, so a GPU's peak memory is that cell's alone; the
cells run back to back in one invocation. Memory is the activations autograd keeps for the backward pass
(exact, on any device; frozen weights excluded), plus the peak allocated by torch on a GPU. The FLOP ratio (torch's FlopCounterMode on one train step)
is the physical limit of the saving; the paper claims over 20% of train/inference time and memory saved.

    python benchmarks/efficiency.py                 # T5-Small and T5-Base shapes
    python benchmarks/efficiency.py --shapes tiny --repeats 2   # seconds, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

SHAPES = {  # d_model, layers, heads, d_ff, vocab
    "tiny": (64, 2, 4, 128, 512),
    "t5-small": (512, 6, 8, 2048, 32128),
    "t5-base": (768, 12, 12, 3072, 32128),
}
PAPER_CLAIM = "> 20% saved"


def build(shape: str, method: str, budget: int, prompt_length: int, max_length: int, device: str):
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration  # noqa: F401

    from deptune.backbones import Backbone, tiny_tokenizer
    from deptune.methods.adapters import build_model
    from deptune.methods.dept.config import DePTConfig
    from deptune.methods.prompt_tuning.config import PromptTuningConfig

    d, layers, heads, d_ff, vocab = SHAPES[shape]
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(
        T5Config(
            d_model=d,
            d_kv=d // heads,
            d_ff=d_ff,
            num_layers=layers,
            num_heads=heads,
            vocab_size=vocab,
            decoder_start_token_id=0,
        )
    )
    for p in model.parameters():
        p.requires_grad_(False)
    backbone = Backbone(model, tiny_tokenizer("seq2seq"), "seq2seq", shape, None)
    cfg = (
        PromptTuningConfig(prompt_length=budget, max_length=max_length)
        if method == "pt"
        else DePTConfig(prompt_length=prompt_length, budget=budget, max_length=max_length)
    )
    return build_model(backbone, cfg).to(device)


def run_cell(args: argparse.Namespace) -> dict:
    """One (shape, method): median step and inference times, peak memory above the built model, FLOPs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(torch.get_num_threads())
    model = build(args.shape, args.method, args.budget, args.prompt_length, args.max_length, device)
    vocab = SHAPES[args.shape][4]
    ids = torch.randint(2, vocab, (args.batch, args.max_length), device=device)
    mask = torch.ones_like(ids)
    labels = torch.randint(2, vocab, (args.batch, 2), device=device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, eps=1e-6)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    )

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step():
        with autocast:
            loss = model(ids, mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer():
        with torch.no_grad(), autocast:
            model.generate(ids, mask, max_new_tokens=2, min_new_tokens=2)

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    activations = saved_activation_mib(model, lambda: model(ids, mask, labels=labels).loss)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_times, infer_times = [], []
    for i in range(args.repeats + 1):  # the first of each is warm-up
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        t1 = time.perf_counter()
        infer()
        sync()
        t2 = time.perf_counter()
        if i:
            step_times.append(t1 - t0)
            infer_times.append(t2 - t1)
    return {
        "step_s": statistics.median(step_times),
        "infer_s": statistics.median(infer_times),
        "activation_mb": activations,
        "flops": flops,
        "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        "trainable": model.trainable_parameter_count(),
        "seq": model.config.prompt_length + args.max_length,
        "rank": getattr(model.config, "rank", None),
        "device": device,
    }


def saved_activation_mib(model, forward) -> float:
    """MiB of distinct tensors autograd saves in one forward for the backward (parameters excluded)."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(saved.values()) / 2**20


def child(shape: str, method: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--cell",
        "--shape",
        shape,
        "--method",
        method,
        "--repeats",
        str(args.repeats),
        "--batch",
        str(args.batch),
        "--budget",
        str(args.budget),
        "--prompt-length",
        str(args.prompt_length),
        "--max-length",
        str(args.max_length),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="t5-small,t5-base")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--budget", type=int, default=100, help="PT prompt length l")
    parser.add_argument("--prompt-length", type=int, default=60, help="DePT prompt length m")
    parser.add_argument("--max-length", type=int, default=256, help="s: input tokens")
    parser.add_argument("--cell", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(run_cell(args)))
        return
    rows = []
    for shape in args.shapes.split(","):
        pt, dept = child(shape, "pt", args), child(shape, "dept", args)
        flop_ratio = dept["flops"] / pt["flops"]
        rows.append(
            (
                shape,
                "trainable params",
                f"{pt['trainable']:,}",
                f"{dept['trainable']:,}",
                f"{dept['trainable'] / pt['trainable']:.3f}",
                "",
                "",
            )
        )
        rows.append(
            (
                shape,
                "sequence (prompt+s)",
                str(pt["seq"]),
                f"{dept['seq']} (r={dept['rank']})",
                f"{dept['seq'] / pt['seq']:.3f}",
                "",
                "",
            )
        )
        measures = [
            ("step_s", "train step (s)"),
            ("infer_s", "inference (s)"),
            ("activation_mb", "activations (MiB)"),
        ] + ([("peak_mb", "GPU peak (MiB)")] if pt["peak_mb"] else [])
        for key, label in measures:
            rows.append(
                (
                    shape,
                    label,
                    f"{pt[key]:.4f}",
                    f"{dept[key]:.4f}",
                    f"{dept[key] / pt[key]:.3f}",
                    f"{flop_ratio:.3f}",
                    PAPER_CLAIM,
                )
            )
    device = pt["device"]
    print(
        f"DePT vs PT, equal trainable parameters; batch {args.batch}, s={args.max_length}, l={args.budget}, "
        f"m={args.prompt_length}; median of {args.repeats}; device {device}"
    )
    header = ("shape", "measure", "PT", "DePT", "DePT/PT", "FLOP ratio", "paper")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
