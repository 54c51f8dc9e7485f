"""The docs' picture of real output (docs/images/digits.png): the shipped digits model at its defaults.

Row 1: "a handwritten digit 0" ... "9"; row 2: the same with "thick" and "slanted to the right"; seed 0 for
every image. Each 32x32 image is enlarged 4x with nearest-neighbour pixels, on a 4-pixel grey grid.

    python scripts/docs_figures.py [--out docs/images/digits.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

import sdlab

PROMPTS = (
    [f"a handwritten digit {d}" for d in range(10)],
    [f"a thick handwritten digit {d}, slanted to the right" for d in range(10)],
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/docs/digits.png")
    args = parser.parse_args()
    pipe = sdlab.load_pipeline()
    zoom, gap = 4, 4
    side = 32 * zoom
    sheet = Image.new("RGB", (10 * side + 11 * gap, 2 * side + 3 * gap), (128, 128, 128))
    for row, prompts in enumerate(PROMPTS):
        for col, prompt in enumerate(prompts):
            image = pipe.generate(prompt, seed=0).images[0]
            big = image.resize((side, side), Image.Resampling.NEAREST)
            sheet.paste(big, (gap + col * (side + gap), gap + row * (side + gap)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(args.out)


if __name__ == "__main__":
    main()
