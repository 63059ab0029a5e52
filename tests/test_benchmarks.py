"""The benchmark scripts run and print their tables (figures are checked by reading them, not here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_efficiency_table_on_the_tiny_shape():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/efficiency.py"), "--shapes", "tiny",
                          "--repeats", "1", "--batch", "1"], capture_output=True, text=True, check=True).stdout
    rows = {line.split("  ")[1].strip(): line.split() for line in out.splitlines() if line.startswith("tiny")}
    # d=64, s=256, l=100, m=60 -> r=8: 60*64 + 8*(256+64) = 6,400 = 100*64 exactly
    assert rows["trainable params"][-3:] == ["6,400", "6,400", "1.000"]
    assert "316 (r=8)" in " ".join(rows["sequence (prompt+s)"]) and "0.888" in rows["sequence (prompt+s)"]
    assert {"train step (s)", "inference (s)", "activations (MiB)"} <= rows.keys()
    flop_ratio = float(rows["train step (s)"][-4])
    assert 0.7 < flop_ratio < 0.9  # DePT's shorter sequence costs fewer FLOPs
