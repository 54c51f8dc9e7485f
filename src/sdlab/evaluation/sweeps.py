"""Sweeps: one sampling setting varied at a time, every point measured by the judge.

Each sweep returns a `Sweep`: rows of numbers plus how to plot them (y against x, one line per
series). `sdlab eval --sweep NAME` writes each as JSON, a markdown table and a PNG plot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sdlab.atomic import atomic_path
from sdlab.evaluation.digits import Judge, gradient_guidance_effect, sample_digits, strength_effect
from sdlab.evaluation.metrics import diversity, prompt_accuracy
from sdlab.pipeline import Pipeline

GUIDANCE_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0)
STRENGTHS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SCHEDULERS = ("ddim", "pndm", "lms", "euler_a", "dpmpp_2m", "unipc")  # the seed's three, then today's
STEPS = (5, 10, 20, 40)
GUIDE_SCALES = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class Sweep:
    name: str
    title: str
    rows: list[dict]
    x: str  # the varied setting
    y: tuple[str, ...]  # one plot panel per measured quantity
    series: str | None = None  # one line per value of this column
    floor: str | None = None  # a column drawn as a dashed reference line (the real-vs-real FID floor)


def guidance_sweep(pipe: Pipeline, judge: Judge, per_digit: int, **sampling) -> Sweep:
    sampling.pop("guidance_scale", None)
    rows = []
    for scale in GUIDANCE_SCALES:
        gray, wanted = sample_digits(pipe, per_digit, guidance_scale=scale, **sampling)
        rows.append({
            "guidance_scale": scale,
            "prompt_accuracy": prompt_accuracy(judge.predict(gray), wanted),
            "fid": judge.fid(gray),
            "fid_floor": judge.floor(len(gray)),
            "diversity": diversity(judge.features(gray), wanted),
        })  # fmt: skip
    return Sweep("guidance", "Classifier-free guidance scale", rows, "guidance_scale",
                 ("prompt_accuracy", "fid", "diversity"), floor="fid_floor")  # fmt: skip


def strength_sweep(pipe: Pipeline, judge: Judge, per_digit: int, **sampling) -> Sweep:
    """img2img of held-out real digits prompted to another digit; `per_digit` x 10 images per strength."""
    rows = strength_effect(pipe, judge, strengths=STRENGTHS, n=10 * per_digit, **sampling)
    return Sweep("strength", "img2img strength (held-out digits prompted to another digit)", rows,
                 "strength", ("keeps_source", "becomes_prompted"))  # fmt: skip


def scheduler_sweep(pipe: Pipeline, judge: Judge, per_digit: int, **sampling) -> Sweep:
    sampling = {k: v for k, v in sampling.items() if k not in ("scheduler", "num_inference_steps")}
    rows = []
    for name in SCHEDULERS:
        for steps in STEPS:
            gray, wanted = sample_digits(
                pipe, per_digit, scheduler=name, num_inference_steps=steps, **sampling
            )
            rows.append({
                "scheduler": name,
                "steps": steps,
                "prompt_accuracy": prompt_accuracy(judge.predict(gray), wanted),
                "fid": judge.fid(gray),
                "fid_floor": judge.floor(len(gray)),
            })  # fmt: skip
    return Sweep("schedulers", "Schedulers x steps", rows, "steps", ("fid", "prompt_accuracy"),
                 series="scheduler", floor="fid_floor")  # fmt: skip


def guide_sweep(pipe: Pipeline, judge: Judge, per_digit: int, **sampling) -> Sweep:
    from sdlab.digits.classifier import train_classifier
    from sdlab.digits.data import train_test_split

    train, _ = train_test_split()
    second = train_classifier(train.images, train.labels, seed=1234, epochs=4)
    rows = gradient_guidance_effect(
        pipe, judge, GUIDE_SCALES, per_digit=per_digit, second_opinion=second, **sampling
    )
    return Sweep("guide", "Gradient guidance, no prompt (--guide-digit D, --guide-scale)", rows,
                 "guide_scale", ("accuracy", "accuracy_second_classifier", "fid"), floor="fid_floor")  # fmt: skip


SWEEPS = {
    "guidance": guidance_sweep,
    "strength": strength_sweep,
    "schedulers": scheduler_sweep,
    "guide": guide_sweep,
}


def write_sweep(sweep: Sweep, folder: Path, caption: str = "") -> list[Path]:
    """NAME.json, NAME.md and NAME.png in `folder`, each written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{sweep.name}.{ext}" for ext in ("json", "md", "png")]
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(json_text(sweep, caption))
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(f"{sweep.title}. {caption}\n\n{markdown_table(sweep.rows)}")
    with atomic_path(paths[2]) as tmp:
        plot(sweep, tmp, caption)
    return paths


def json_text(sweep: Sweep, caption: str) -> str:
    import json

    return json.dumps({**asdict(sweep), "caption": caption}, indent=2) + "\n"


def markdown_table(rows: list[dict]) -> str:
    columns = list(rows[0])
    cells = lambda row: [_cell(row.get(c)) for c in columns]  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def plot(sweep: Sweep, path: Path, caption: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweep.y), figsize=(4.2 * len(sweep.y), 3.6), squeeze=False)
    groups = sorted({r[sweep.series] for r in sweep.rows}, key=str) if sweep.series else [None]
    for ax, y in zip(axes[0], sweep.y, strict=True):
        for group in groups:
            rows = [r for r in sweep.rows if sweep.series is None or r[sweep.series] == group]
            if all(y in r for r in rows):
                ax.plot([r[sweep.x] for r in rows], [r[y] for r in rows], marker="o", label=group)
        if sweep.floor and y.startswith("fid"):
            floor = np.mean([r[sweep.floor] for r in sweep.rows])
            ax.axhline(floor, color="gray", linestyle="--", label="real-vs-real floor")
            ax.axhline(2 * floor, color="gray", linestyle=":", label="2x floor")
            ax.set_yscale("log")
        ax.set_xlabel(sweep.x)
        ax.set_title(y)
        ax.grid(alpha=0.3)
        if sweep.series or (sweep.floor and y.startswith("fid")):
            ax.legend(fontsize=7)
    fig.suptitle(f"{sweep.title}\n{caption}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
