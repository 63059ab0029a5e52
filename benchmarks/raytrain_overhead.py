"""What Ray Train adds to one short run: seconds from fit() to the end of the first step, and from the
last step to fit() returning, next to the same steps in a plain process; 1 and 2 workers.

A tiny model on the synthetic task; one Ray session for all runs (as sweep trials share one), runs back to
back, medians of --repeats. Every report carries the worker's wall clock, so the first report (after
step 1) marks the first step's end and the last report the last step's.
With a GPU, also a DePT T5-Base-shape training run there: tokens/s and model FLOP utilisation.

    python benchmarks/raytrain_overhead.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from deptune.cluster import local as local_ray

local_ray.apply()  # before ray is imported: a loopback-only local Ray

import ray  # noqa: E402
import torch  # noqa: E402

from deptune.cluster.trainer import RaySession, ReportLog, build_trainer, read_report_log  # noqa: E402
from deptune.specs import parse_spec  # noqa: E402
from deptune.train.loop import train  # noqa: E402
from deptune.train.session import LocalSession  # noqa: E402
from deptune.train.spec import RunSpec  # noqa: E402


class TimedRaySession(RaySession):
    def report(self, metrics, checkpoint_dir, improved):
        super().report({**metrics, "wall_clock": time.time()}, checkpoint_dir, improved)


class TimedLocalSession(LocalSession):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clocks: list[float] = []

    def report(self, metrics, checkpoint_dir, improved):
        self.clocks.append(time.time())


def _timed_worker(config: dict) -> None:
    train(RunSpec.model_validate(config["spec"]), session=TimedRaySession())


def spec_for(workers: int, steps: int, out: Path) -> RunSpec:
    return parse_spec(
        {
            "backbone": {"name": "tiny-t5"},
            "task": {"name": "synthetic", "synthetic_size": 400, "max_eval_samples": 8},
            "method": {"name": "dept", "prompt_length": 8, "rank": 4, "max_length": 32},
            "train": {
                "steps": steps,
                "batch_size": 16,
                "eval_every": 1,
                "warmup_steps": 1,
                "evaluate_test": False,
                "max_new_tokens": 2,
                "output_dir": str(out),
            },
            "resources": {"workers": workers},
        }
    )


def ray_run(workers: int, steps: int, out: Path, name: str) -> tuple[float, float, float]:
    spec = spec_for(workers, steps, out)
    log = out / f"{name}.jsonl"
    trainer = build_trainer(spec, name, storage=str(out / "ray"), callbacks=[ReportLog(log)], loop=_timed_worker)
    start = time.time()
    trainer.fit()
    end = time.time()
    reports = read_report_log(log)
    return reports[0]["wall_clock"] - start, end - reports[-1]["wall_clock"], end - start


def plain_run(steps: int, out: Path) -> tuple[float, float, float]:
    spec = spec_for(1, steps, out)
    session = TimedLocalSession(out, torch.device("cpu"))
    start = time.time()
    train(spec, session=session)
    end = time.time()
    return session.clocks[0] - start, end - session.clocks[-1], end - start


def gpu_mfu(steps: int = 20, batch: int = 32) -> str:
    """DePT on a T5-Base shape (random weights) in bf16: tokens/s and model FLOP utilisation."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import T5Config, T5ForConditionalGeneration

    from deptune.backbones import Backbone, tiny_tokenizer
    from deptune.methods.adapters import build_model
    from deptune.methods.dept.config import DePTConfig

    device = torch.device("cuda")
    model = T5ForConditionalGeneration(
        T5Config(
            d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12, vocab_size=32128, decoder_start_token_id=0
        )
    )
    model.requires_grad_(False)
    dept = build_model(
        Backbone(model, tiny_tokenizer("seq2seq"), "seq2seq", "t5-base-shape", None),
        DePTConfig(prompt_length=60, rank=30, max_length=256),
    ).to(device)
    ids = torch.randint(2, 32128, (batch, 256), device=device)
    mask, labels = torch.ones_like(ids), torch.randint(2, 32128, (batch, 2), device=device)
    opt = torch.optim.AdamW([p for p in dept.parameters() if p.requires_grad], lr=1e-3, eps=1e-6)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = dept(ids, mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / steps
    peak = 989e12  # H100/H200 dense bf16
    return (
        f"GPU {torch.cuda.get_device_name()}: DePT T5-Base shape, batch {batch} x 256 tokens, bf16: "
        f"{batch * 256 / seconds:,.0f} tokens/s, {seconds * 1e3:.1f} ms/step, "
        f"MFU {counter.get_total_flops() / seconds / peak:.1%} of {peak / 1e12:.0f} TFLOP/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        rows["plain process"] = [plain_run(args.steps, out) for _ in range(args.repeats)]
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
        try:
            for workers in (1, 2):
                rows[f"Ray Train, {workers} worker(s)"] = [
                    ray_run(workers, args.steps, out, f"w{workers}-{i}") for i in range(args.repeats)
                ]
        finally:
            ray.shutdown()
    print(f"tiny-t5, {args.steps} steps of 16 (an eval after each), medians of {args.repeats} back-to-back runs")
    header = ("run", "call -> first step done (s)", "last step -> return (s)", "total (s)", "overhead vs plain (s)")
    plain_total = statistics.median(r[2] for r in rows["plain process"])
    table = [
        (
            name,
            *(f"{statistics.median(r[i] for r in runs):.2f}" for i in range(3)),
            f"{statistics.median(r[2] for r in runs) - plain_total:+.2f}",
        )
        for name, runs in rows.items()
    ]
    widths = [max(len(row[i]) for row in table + [header]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *table]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print(gpu_mfu() if torch.cuda.is_available() else "no GPU here: the T5-Base-shape tokens/s and MFU run is skipped")


if __name__ == "__main__":
    main()
