"""The pictures behind the judges' verdicts, for the Evaluate page (docs/images/judges-*.png).

- judges-misread.png: every image of a 1,000-image `sdlab eval` sample (the defaults, held-out seeds) that
  some judge does not read as the prompted digit, with what each judge read. Where only one judge misreads,
  the judges disagree.
- judges-settings.png: one image per digit (held-out seeds 100000-100009) for real held-out digits and for
  the settings the judges rank differently, so the FID figures can be seen: strong guidance draws every
  digit alike, without guidance some digits are misdrawn.

    python scripts/judge_figures.py [--out docs/images]      # about 1 minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ZOOM, GAP = 3, 4
SETTINGS = [  # (label, sampling); None: the held-out real digits
    ("real held-out digits", None),
    ("unguided (UniPC 6)", dict(scheduler="unipc", num_inference_steps=6, guidance_scale=1.0)),
    ("the defaults", {}),
    (
        "CFG 3 at every step (UniPC 6)",
        dict(
            scheduler="unipc",
            num_inference_steps=6,
            guidance_scale=3.0,
            guidance_interval=(0.0, None),
            deep_cache=1,
        ),
    ),  # fmt: skip
    (
        "diffusers' default call (50 steps, CFG 7.5)",
        dict(num_inference_steps=50, guidance_scale=7.5, guidance_interval=(0.0, None), deep_cache=1),
    ),  # fmt: skip
]


def _tile(gray: np.ndarray) -> Image.Image:
    """(28, 28) in [0, 1], ink bright -> enlarged RGB, ink dark on white (as the model draws)."""
    pixels = (255 - np.clip(gray, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(pixels).resize((28 * ZOOM, 28 * ZOOM), Image.Resampling.NEAREST).convert("RGB")


def misread(pipe, judges, per_digit: int) -> Image.Image:
    from sdlab.evaluation.digits import sample_digits
    from sdlab.evaluation.seeds import HELD_OUT_SEED

    gray, wanted = sample_digits(pipe, per_digit, seed=HELD_OUT_SEED)
    reads = {j.name: j.predict(gray) for j in judges}
    wrong = [i for i in range(len(gray)) if any(r[i] != wanted[i] for r in reads.values())]
    side, label = 28 * ZOOM, 14 * (1 + len(judges))
    columns = 10
    rows = max(1, -(-len(wrong) // columns))
    sheet = Image.new("RGB", (columns * (side + GAP) + GAP, rows * (side + label + GAP) + GAP + 16), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (GAP, 2), f"{len(wrong)} of {len(gray)} images misread by some judge (held-out seeds)", fill="black"
    )
    for k, i in enumerate(wrong):
        x, y = GAP + (k % columns) * (side + GAP), 16 + GAP + (k // columns) * (side + label + GAP)
        sheet.paste(_tile(gray[i]), (x, y))
        lines = [f"asked {wanted[i]}"] + [f"{name}: {reads[name][i]}" for name in reads]
        for n, text in enumerate(lines):
            colour = "black" if n == 0 or reads[list(reads)[n - 1]][i] == wanted[i] else "#c00"
            draw.text((x, y + side + 1 + 13 * n), text, fill=colour)
    return sheet


def settings_sheet(pipe) -> Image.Image:
    from sdlab.digits.data import to_gray, train_test_split
    from sdlab.evaluation.seeds import HELD_OUT_SEED

    _, test = train_test_split()
    side, label_w = 28 * ZOOM, 200
    sheet = Image.new("RGB", (label_w + 10 * (side + GAP) + GAP, len(SETTINGS) * (side + GAP) + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (label, sampling) in enumerate(SETTINGS):
        if sampling is None:
            gray = np.stack([test.images[np.flatnonzero(test.labels == d)[0]] / 255.0 for d in range(10)])
        else:
            prompts = [f"a handwritten digit {d}" for d in range(10)]
            seeds = list(range(HELD_OUT_SEED, HELD_OUT_SEED + 10))
            gray = to_gray(pipe.generate(prompts, seed=seeds, **sampling).pixels).numpy()
        y = GAP + row * (side + GAP)
        draw.text((GAP, y + side // 2 - 6), label, fill="black")
        for d in range(10):
            sheet.paste(_tile(gray[d]), (label_w + GAP + d * (side + GAP), y))
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/docs", help="folder for the two PNGs")
    parser.add_argument("--per-digit", type=int, default=100, help="images per digit in the misread sample")
    args = parser.parse_args()

    import sdlab
    from sdlab.evaluation.digits import load_judges

    pipe = sdlab.load_pipeline()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    misread(pipe, load_judges(), args.per_digit).save(out / "judges-misread.png", optimize=True)
    settings_sheet(pipe).save(out / "judges-settings.png", optimize=True)
    print(out / "judges-misread.png", out / "judges-settings.png", sep="\n")


if __name__ == "__main__":
    main()
