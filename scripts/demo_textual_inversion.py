"""Textual inversion: the digits model learns a new word from 10 images, every other weight frozen.

Two concepts the base captions never name, each learned from one digit of each class, captioned with
the digit the captioner reads and the new token where the base captions put a style word ("a <wide>
handwritten digit 3"):

- `<wide>` (default): digits stretched 1.35x sideways (width / height about 1.05 against MNIST's 0.8);
- `<tiny>`: digits drawn at half size (their smallest word, "small", covers a milder shrink).

Then "a <token> handwritten digit D" should draw the concept measurably (wider, or smaller) and still be
read as D >= 90% of the time. A control row gives the base model's nearest own word ("thick", "small"):
textual inversion can only find what the frozen generator can already draw, and the control shows
how well it draws it.

    python scripts/demo_textual_inversion.py --out runs/demo-ti                  # about 2 minutes
    python scripts/demo_textual_inversion.py --concept tiny --out runs/demo-ti-tiny
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from _demo import DEMO_SAMPLING, fresh, publish, run
from PIL import Image

from sdlab.digits.captioner import DigitsCaptioner
from sdlab.digits.data import train_test_split
from sdlab.digits.folders import shrink, stretch, write_digits
from sdlab.embeddings import load_embedding
from sdlab.evaluation.digits import Judge
from sdlab.evaluation.teaching import aspect, shape_report
from sdlab.loading import DEFAULT_MODEL, load_pipeline

# name -> how the training digits are made, the token's initial word, the control prompt, the measure
CONCEPTS = {
    "wide": dict(make=stretch, initializer="thick", control="a thick handwritten digit {d}"),
    "tiny": dict(make=shrink, initializer="small", control="a small handwritten digit {d}"),
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", choices=sorted(CONCEPTS), default="wide")
    parser.add_argument("--out", default="runs/demo-ti")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--num-vectors", type=int, default=1)
    parser.add_argument("--per-digit", type=int, default=20)
    args = parser.parse_args()
    concept, token = CONCEPTS[args.concept], f"<{args.concept}>"
    out = fresh(args.out)
    train, _ = train_test_split()
    # one digit of each class (then more at random): the token must learn the concept, not "these digits"
    rng = np.random.default_rng(1)
    pick = [int(rng.choice(np.flatnonzero(train.labels == d))) for d in range(10)][: args.images]
    data = out / "data"
    paths = write_digits(data, concept["make"](train.images[pick] / 255.0))
    # the digits captioner reads each digit; the caption names the digit, and the token where a style word goes
    facts = DigitsCaptioner.load(DEFAULT_MODEL / "captioner.safetensors").facts(train.images[pick])
    lines = [
        json.dumps({"file_name": p.name, "text": f"a {token} handwritten digit {f.digit}"})
        for p, f in zip(paths, facts, strict=True)
    ]
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    seconds = run(
        "textual-inversion", data, "-o", out / "run", "--token", token, "--initializer-token", concept["initializer"],
        "--num-vectors", args.num_vectors, "--prompts", "caption", "--steps", args.steps, "--batch-size", 10,
        "--lr", args.lr, "--validation-prompt", f"a {token} handwritten digit 3|a handwritten digit 3", "--a1111",
    )  # fmt: skip
    judge = Judge.load()
    pipe = load_pipeline()
    sampling = dict(per_digit=args.per_digit, **DEMO_SAMPLING)
    rows = {
        "plain": shape_report(pipe, judge, "a handwritten digit {d}", **sampling),
        "control": shape_report(pipe, judge, concept["control"], **sampling),
    }
    load_embedding(pipe, out / "run" / "learned_embeds.safetensors")
    rows["token"] = shape_report(pipe, judge, f"a {token} handwritten digit {{d}}", **sampling)
    written = np.stack([np.asarray(Image.open(p).convert("L"))[2:-2, 2:-2] for p in paths]) / 255.0
    report = {
        "concept": args.concept, "seconds": seconds, "steps": args.steps, "lr": args.lr,
        "num_vectors": args.num_vectors, "images": args.images, **rows,
        "training_images_mean_aspect": float(aspect(written).mean()),
        "size_change": rows["token"]["mean_size"] / rows["plain"]["mean_size"] - 1,
        "aspect_change": rows["token"]["mean_aspect"] / rows["plain"]["mean_aspect"] - 1,
    }  # fmt: skip
    header = (
        "| prompt | mean height (px of 28) | width / height | prompt accuracy |\n| --- | --- | --- | --- |\n"
    )
    table = header + "".join(
        f"| {r['prompt'].replace('{d}', 'D').replace('<', '&lt;').replace('>', '&gt;')}{' (control)' if k == 'control' else ''} "
        f"| {r['mean_size']:.1f} | {r['mean_aspect']:.2f} | {r['prompt_accuracy']:.2f} |\n"
        for k, r in rows.items()
    ) + (
        f"\n{args.images} training digits (width / height {report['training_images_mean_aspect']:.2f}); "
        f"{args.per_digit * 10} images per row, 20 steps, DPM++ 2M at CFG 1.5; {args.num_vectors} vector(s), "
        f"{args.steps} steps at lr {args.lr}, trained in {seconds / 60:.1f} min. "
        f"Command: `python scripts/demo_textual_inversion.py --concept {args.concept}`.\n"
    )  # fmt: skip
    publish(
        "textual_inversion" if args.concept == "wide" else f"textual_inversion-{args.concept}", report, table
    )


if __name__ == "__main__":
    main()
