"""Training speed of each stage of `sdlab train-base`: optimizer steps per second, from the runs' own logs.

Runs `sdlab train-base --preset quick` (the digits model at half width) with a few steps per stage in a
temporary folder, then reads each stage's `loss.csv` (one row per step, with its wall-clock time) and
reports the median steps/s over the second half of the steps (warm-up and the first batches left out).
The same command measures any commit, so a before/after comparison is two runs of it:

    python scripts/bench_train.py [--steps 80] [--device cpu|cuda] [--out docs/bench_train.json]

On a GPU machine `--device cuda` times the stages there (the issue's target: the quick preset's UNet
stage at >= 50 steps/s on an H100/H200-class GPU).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("vae", "text", "unet")


def stage_speed(loss_csv: Path) -> dict:
    """Steps/s of one stage: 1 / the median time between consecutive steps over its second half."""
    with loss_csv.open(newline="") as f:
        times = [float(row["time"]) for row in csv.DictReader(f)]
    half = times[len(times) // 2 :]
    gaps = [b - a for a, b in zip(half, half[1:], strict=False)]
    median = statistics.median(gaps)
    return {
        "steps": len(times),
        "steps_per_s": round(1 / median, 2),
        "median_step_ms": round(1000 * median, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=80, help="steps of each stage")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (sets CUDA_VISIBLE_DEVICES='' for cpu)")
    parser.add_argument("--label", default="", help="a name for this run in the JSON (e.g. the commit)")
    parser.add_argument("--out", default=None, help="append the result to this JSON file")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    with tempfile.TemporaryDirectory(prefix="sdlab-bench-train-") as tmp:
        run = Path(tmp) / "run"
        command = [
            sys.executable, "-m", "sdlab.cli.main", "train-base", "--preset", "quick", "--run-dir", str(run),
            "--classifier-epochs", "1", "--vae-steps", str(args.steps), "--text-pretrain-steps", str(args.steps),
            "--unet-steps", str(args.steps), "--validate-every", str(10 * args.steps),
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            sys.exit(f"train-base failed:\n{done.stderr[-3000:]}")
        total = time.perf_counter() - start
        stages = {name: stage_speed(run / "stages" / name / "loss.csv") for name in STAGES}
    result = {
        "label": args.label,
        "device": args.device,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(
            ["python scripts/bench_train.py", f"--steps {args.steps}", f"--device {args.device}"]
        ),
        "total_s": round(total, 1),
        "stages": stages,
    }
    print(f"{'stage':<6} {'steps/s':>8} {'ms/step':>8}")
    for name, row in stages.items():
        print(f"{name:<6} {row['steps_per_s']:>8} {row['median_step_ms']:>8}")
    print(f"whole run (captioner, 3 stages, saving): {total:.1f} s")
    if args.out:
        path = Path(args.out)
        runs = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps([*runs, result], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
