"""Shared pieces of the teaching demonstrations (scripts/demo_*.py): data folders, timing, reports."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sdlab.atomic import atomic_path
from sdlab.cli.main import main as sdlab

DOCS = Path(__file__).resolve().parent.parent / "docs" / "demos"


# The sampling settings the demos were measured with (the digits model's defaults before issue 13 chose
# faster ones), pinned so that each demo reproduces its documented figures.
DEMO_SAMPLING = dict(
    num_inference_steps=20, scheduler="dpmpp_2m", guidance_scale=1.5, guidance_interval=(0.0, None)
)


def write_digits(folder: Path, images: np.ndarray, *, scale: float = 1.0) -> list[Path]:
    """(N, 28, 28) digits (uint8, or float in [0, 1]) as 32x32 RGB PNGs, padded like the digits model's data;
    `scale` shrinks them about the centre."""
    folder.mkdir(parents=True, exist_ok=True)
    if images.dtype != np.uint8:
        images = (np.asarray(images).clip(0, 1) * 255).round().astype(np.uint8)
    paths = []
    for i, digit in enumerate(images):
        picture = Image.fromarray(digit)
        if scale != 1.0:
            side = max(1, round(28 * scale))
            small = picture.resize((side, side), Image.Resampling.LANCZOS)
            picture = Image.new("L", (28, 28))
            picture.paste(small, ((28 - side) // 2, (28 - side) // 2))
        canvas = Image.new("L", (32, 32))
        canvas.paste(picture, (2, 2))
        path = folder / f"{i:04d}.png"
        canvas.convert("RGB").save(path)
        paths.append(path)
    return paths


def run(*argv) -> float:
    """Run an sdlab command; returns its wall time in seconds (raises if it fails)."""
    start = time.perf_counter()
    code = sdlab([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"sdlab {argv[0]} failed with exit status {code}")
    return time.perf_counter() - start


def publish(name: str, report: dict, table: str) -> None:
    """docs/demos/NAME.json and NAME.md."""
    DOCS.mkdir(parents=True, exist_ok=True)
    with atomic_path(DOCS / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    with atomic_path(DOCS / f"{name}.md") as tmp:
        tmp.write_text(table)
    print(table)
