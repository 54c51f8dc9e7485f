"""Textual inversion: the digits model learns the word <tiny> for very small digits from 10 images.

The base captions never name "tiny" (their smallest word, "small", covers a milder shrink). The ten
training digits are drawn at half size; their captions name only the digit the captioner reads, with
the new token where the base captions put a style word ("a <tiny> handwritten digit 3"). Only the
token's embedding trains. Then "a <tiny> handwritten digit D" should draw measurably smaller digits
than "a handwritten digit D", still read as D >= 90% of the time. The control row, "a small handwritten
digit D", shows how small and how legible the frozen generator already draws digits for the nearest
word it knows: textual inversion can only find what the generator can draw.

    python scripts/demo_textual_inversion.py --out runs/demo-ti      # a few minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _demo import publish, run, write_digits
from PIL import Image

from sdlab.digits.attributes import measure
from sdlab.digits.captioner import DigitsCaptioner
from sdlab.digits.data import train_test_split
from sdlab.embeddings import load_embedding
from sdlab.evaluation.digits import Judge
from sdlab.evaluation.teaching import size_report
from sdlab.loading import DEFAULT_MODEL, load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo-ti")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--num-vectors", type=int, default=1)
    parser.add_argument("--per-digit", type=int, default=20)
    args = parser.parse_args()
    out = Path(args.out)
    train, _ = train_test_split()
    # one digit of each class (then more at random): the token must learn "tiny", not "these digits"
    rng = np.random.default_rng(1)
    pick = [int(rng.choice(np.flatnonzero(train.labels == d))) for d in range(10)][: args.images]
    data = out / "data"
    paths = write_digits(data, train.images[pick], scale=0.5)
    # the digits captioner reads each digit; the caption names the digit only, never its size
    facts = DigitsCaptioner.load(DEFAULT_MODEL / "captioner.safetensors").facts(train.images[pick])
    lines = [
        json.dumps({"file_name": p.name, "text": f"a <tiny> handwritten digit {f.digit}"})
        for p, f in zip(paths, facts, strict=True)
    ]
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    seconds = run(
        "textual-inversion", data, "-o", out / "run", "--token", "<tiny>", "--initializer-token", "small",
        "--num-vectors", args.num_vectors, "--prompts", "caption", "--steps", args.steps, "--batch-size", 10, "--lr", args.lr,
        "--validation-prompt", "a <tiny> handwritten digit 3|a handwritten digit 3", "--a1111",
    )  # fmt: skip
    judge = Judge.load()
    pipe = load_pipeline()
    sampling = dict(num_inference_steps=20)
    without = size_report(pipe, judge, "a handwritten digit {d}", per_digit=args.per_digit, **sampling)
    # the control: how small, and how legible, the frozen generator draws digits for the nearest word it knows
    small = size_report(pipe, judge, "a small handwritten digit {d}", per_digit=args.per_digit, **sampling)
    load_embedding(pipe, out / "run" / "learned_embeds.safetensors")
    with_token = size_report(
        pipe, judge, "a <tiny> handwritten digit {d}", per_digit=args.per_digit, **sampling
    )
    written = np.stack([np.asarray(Image.open(p).convert("L"))[2:-2, 2:-2] for p in paths])
    real = float(measure(written).size.mean())
    report = {"seconds": seconds, "steps": args.steps, "lr": args.lr, "num_vectors": args.num_vectors, "images": args.images, "without": without, "small": small, "with": with_token,
              "size_change": with_token["mean_size"] / without["mean_size"] - 1, "training_images_mean_height": real}  # fmt: skip
    table = (
        "| prompt | mean digit height (px of 28) | prompt accuracy |\n| --- | --- | --- |\n"
        f"| a handwritten digit D | {without['mean_size']:.1f} | {without['prompt_accuracy']:.2f} |\n"
        f"| a small handwritten digit D (the base model's own word) | {small['mean_size']:.1f} | {small['prompt_accuracy']:.2f} |\n"
        f"| a &lt;tiny&gt; handwritten digit D | {with_token['mean_size']:.1f} | {with_token['prompt_accuracy']:.2f} |\n\n"
        f"{args.images} half-size training digits (mean height {real:.1f} px); {args.per_digit * 10} images per row, "
        f"20 steps; height change {report['size_change']:+.0%}; {args.num_vectors} vector(s), {args.steps} steps at lr {args.lr}, "
        f"trained in {seconds / 60:.1f} min.\n"
    )
    publish("textual_inversion", report, table)


if __name__ == "__main__":
    main()
