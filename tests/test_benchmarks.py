"""The benchmark scripts run and print their tables (figures are checked by reading them, not here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # the benchmark script in its own process
def test_efficiency_table_on_the_tiny_shape():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/efficiency.py"), "--shapes", "tiny", "--repeats", "1", "--batch", "1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {line.split("  ")[1].strip(): line.split() for line in out.splitlines() if line.startswith("tiny")}
    # d=64, s=256, l=100, m=60 -> r=8: 60*64 + 8*(256+64) = 6,400 = 100*64 exactly
    assert rows["trainable params"][-3:] == ["6,400", "6,400", "1.000"]
    assert "316 (r=8)" in " ".join(rows["sequence (prompt+s)"]) and "0.888" in rows["sequence (prompt+s)"]
    assert {"train step (s)", "inference (s)", "activations (MiB)"} <= rows.keys()
    flop_ratio = float(rows["train step (s)"][-4])
    assert 0.7 < flop_ratio < 0.9  # DePT's shorter sequence costs fewer FLOPs


def test_sweep_overhead_splits_the_cost_into_per_sweep_and_per_trial():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import sweep_overhead
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    # 8 trials of 1 s cost 20 s, their first 2 cost 10 s: 12 s and 8 s on top of training, so 4 s for 6 more
    # trials (2/3 s each) and 12 - 8 * 2/3 = 6.67 s once per sweep
    per_sweep, marginal = sweep_overhead.split_cost(20.0, 10.0, [1.0] * 8, 8, 2)
    assert round(marginal, 4) == round(2 / 3, 4) and round(per_sweep, 2) == 6.67


def test_the_plain_loop_of_sweep_overhead_imports_no_ray():
    """Its fresh-process row is a hand-written Optuna script: it must not pay Ray's imports."""
    code = (
        "import sys; sys.argv = ['x']; sys.path.insert(0, 'benchmarks'); import sweep_overhead; "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
