"""DreamBooth with and without prior preservation: one writer's distinctive 4 bound to "sks".

Subject: the most slanted 4 of the training split, seen in 8 slightly shifted and rotated copies (like
photos of one dog from several angles). Instance prompt "a sks handwritten digit 4", class prompt
"a handwritten digit 4". Measured as in the DreamBooth paper, in miniature, with the evaluation
classifier's features: subject fidelity (similarity of "a sks ..." images to the subject) against
language drift (similarity of plain "a handwritten digit 4" images to the subject; the class prompt's
accuracy and diversity). Prior preservation should reduce the drift.

    python scripts/demo_dreambooth.py --out runs/demo-dreambooth     # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse

import numpy as np
from _demo import DEMO_SAMPLING, fresh, publish, run
from PIL import Image

from sdlab.digits.attributes import measure
from sdlab.digits.data import train_test_split
from sdlab.digits.folders import write_digits
from sdlab.evaluation.digits import Judge
from sdlab.evaluation.teaching import subject_report
from sdlab.loading import load_pipeline

SUBJECT = "a sks handwritten digit 4"
CLASS = "a handwritten digit 4"


def subject_views(digit: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n views of one digit: shifted by up to 1 px and rotated by up to 6 degrees."""
    rng = np.random.default_rng(seed)
    views = []
    for i in range(n):
        image = Image.fromarray(digit).rotate(
            0 if i == 0 else rng.uniform(-6, 6), resample=Image.Resampling.BILINEAR
        )
        dx, dy = (0, 0) if i == 0 else rng.integers(-1, 2, 2)
        views.append(np.roll(np.asarray(image), (dy, dx), axis=(0, 1)))
    return np.stack(views)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo-dreambooth")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--class-images", type=int, default=100)
    parser.add_argument("-n", type=int, default=100, help="images generated per measurement")
    args = parser.parse_args()
    out = fresh(args.out)
    train, _ = train_test_split()
    fours = train.images[train.labels == 4]
    subject = fours[np.argmax(measure(fours).slant)]
    instances = subject_views(subject, args.images)
    write_digits(out / "instances", instances)
    judge = Judge.load()
    gray = instances.astype(np.float32) / 255
    sampling = dict(DEMO_SAMPLING)
    report = {"base": subject_report(load_pipeline(), judge, gray, SUBJECT, CLASS, 4, args.n, **sampling)}
    common = ["--instance-prompt", SUBJECT, "--steps", args.steps, "--batch-size", 8, "--lr", args.lr,
              "--checkpoint-every", 100, "--validation-prompt", f"{SUBJECT}|{CLASS}"]  # fmt: skip
    for name, extra in (
        ("no_prior", []),
        ("prior", ["--class-prompt", CLASS, "--prior-preservation", "--num-class-images", args.class_images,
                   "--class-dir", out / "class_images"]),
    ):  # fmt: skip
        seconds = run("dreambooth", out / "instances", "-o", out / name, *common, *extra)
        pipe = load_pipeline(out / name / "model")
        report[name] = {
            "seconds": seconds,
            **subject_report(pipe, judge, gray, SUBJECT, CLASS, 4, args.n, **sampling),
        }
    head = "| model | subject fidelity ↑ | class drift to subject ↓ | class accuracy | class diversity | time |\n"
    head += "| --- | --- | --- | --- | --- | --- |\n"
    rows = [
        ("base model", report["base"]),
        ("DreamBooth", report["no_prior"]),
        ("DreamBooth + prior preservation", report["prior"]),
    ]
    body = "".join(
        f"| {name} | {r['subject_fidelity']:.3f} | {r['class_drift_to_subject']:.3f} | {r['class_accuracy']:.2f} | "
        f"{r['class_diversity']:.2f} | {r.get('seconds', 0) / 60:.1f} min |\n"
        for name, r in rows
    )
    note = (f"\n{args.images} instance images, {args.steps} steps at lr {args.lr}, batch 8 (+ 8 class images with prior "
            f"preservation, {args.class_images} generated); {args.n} images per measurement, 20 steps. Similarities are "
            "cosines of the evaluation classifier's features to the subject's mean feature.\n")  # fmt: skip
    publish("dreambooth", report, head + body + note)


if __name__ == "__main__":
    main()
