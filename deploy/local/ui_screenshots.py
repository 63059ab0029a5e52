"""Screenshots of the MLflow UI after a demo-sized sweep, taken by headless Chromium over a real `mlflow server`
on 127.0.0.1: what a user sees of deptune's records (the experiment's first page, the saved trials view, a
stopped trial's charts, the compare page, the parent run's plots). A check for people, not a test: look at
the PNGs.

    python deploy/local/ui_screenshots.py OUT_DIR [--chromium /usr/bin/chromium]

Needs Chromium (Debian: `apt-get install chromium`). The server, the sweep's Ray and everything they write
live in a temporary folder and are gone afterwards; only the PNGs stay in OUT_DIR."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLASSIC = "workflowType=machine_learning"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rest(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_for(base: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {base} did not answer")


def shoot(chromium: str, url: str, out: Path, size: str = "1600,1000") -> None:
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={size}",
            "--virtual-time-budget=15000",
            f"--screenshot={out}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    print(f"{out.name}: {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="deptune-ui-") as tmp:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend-store-uri",
                f"sqlite:///{tmp}/mlflow.db",
                "--artifacts-destination",
                f"{tmp}/artifacts",
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # as deploy/ runs it
        )
        try:
            wait_for(base)
            sets = {
                "tracking.uri": base,
                "train.output_dir": f"{tmp}/out",
                "study.storage": f"sqlite:///{tmp}/study.db",
            }
            command = [str(BIN / "deptune"), "sweep", str(REPO / "search_spaces" / "demo.yaml")]
            command += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
            subprocess.run(command, check=True, env={**os.environ, "RAY_ADDRESS": ""}, cwd=tmp)
            with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=demo") as r:
                experiment = json.loads(r.read())["experiment"]
            eid = experiment["experiment_id"]
            runs = rest(base, "runs/search", {"experiment_ids": [eid], "max_results": 100})["runs"]
            tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
            parent = next(r for r, t in zip(runs, tags, strict=True) if t.get("deptune.role") == "sweep")
            trials = [(r, t) for r, t in zip(runs, tags, strict=True) if t.get("deptune.role") == "trial"]
            stopped = next(r for r, t in trials if t.get("deptune.state") == "PRUNED")
            ids = json.dumps([r["info"]["run_id"] for r, _ in trials[:4]])
            pid, sid = parent["info"]["run_id"], stopped["info"]["run_id"]
            shots = {
                "1-experiment.png": f"{base}/#/experiments/{eid}",
                "2-saved-view.png": f"{base}/#/experiments/{eid}/runs?{CLASSIC}&viewStateShareKey=deptune-trials",
                "3-stopped-trial-charts.png": f"{base}/#/experiments/{eid}/runs/{sid}/model-metrics?{CLASSIC}",
                "4-compare.png": f"{base}/#/compare-runs?runs={ids}&experiments=[%22{eid}%22]&{CLASSIC}",
                "5-parent-plots.png": f"{base}/#/experiments/{eid}/runs/{pid}/artifacts/plots/slice.png?{CLASSIC}",
                "6-parent-overview.png": f"{base}/#/experiments/{eid}/runs/{pid}?{CLASSIC}",
            }
            for name, url in shots.items():
                shoot(args.chromium, url, args.out / name)
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
