"""Shared pieces of the teaching demonstrations (scripts/demo_*.py): timing and reports."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from sdlab.atomic import atomic_path
from sdlab.cli.main import main as sdlab
from sdlab.evaluation.provenance import write_measurement

# results land here, never over tracked files; the docs' figures are copies made on purpose (docs/data/demos)
RESULTS = Path("runs") / "demos"
STARTED = time.perf_counter()


# The sampling settings the demos were measured with (the digits model's defaults before issue 13 chose
# faster ones), pinned so that each demo reproduces its documented figures.
DEMO_SAMPLING = dict(
    num_inference_steps=20, scheduler="dpmpp_2m", guidance_scale=1.5, guidance_interval=(0.0, None)
)


def fresh(folder: str | Path) -> Path:
    """The demo's own output folder, emptied: a rerun measures a run from scratch (the recipes themselves refuse
    to write over an earlier run's checkpoints without --resume)."""
    folder = Path(folder)
    if folder.exists():
        print(f"removing the previous run in {folder}")
        shutil.rmtree(folder)
    return folder


def run(*argv) -> float:
    """Run an sdlab command; returns its wall time in seconds (raises if it fails)."""
    start = time.perf_counter()
    code = sdlab([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"sdlab {argv[0]} failed with exit status {code}")
    return time.perf_counter() - start


def publish(name: str, report: dict, table: str) -> None:
    """runs/demos/NAME.json (the report, with the whole script's wall time and its provenance) and NAME.md."""
    report = write_measurement(
        RESULTS / f"{name}.json", {**report, "total_seconds": time.perf_counter() - STARTED}
    )
    with atomic_path(RESULTS / f"{name}.md") as tmp:
        tmp.write_text(table)
    print(table)
    print(f"wrote {RESULTS / name}.json in {report['total_seconds'] / 60:.1f} min")
