"""Sweeps: one sampling setting varied at a time, every point measured by every judge.

Each sweep returns a `Sweep`: rows of numbers plus how to plot them (y against x, one line per
series). `sdlab eval --sweep NAME` writes each as JSON, a markdown table and a PNG plot. Rows carry
the worse of the judges' prompt accuracy and FID / floor, then each judge's (`digits.judged`).
Points are measured on the validation seeds; the fast sweep, which chooses a default, also reports
its finalists on the held-out seeds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from sdlab.atomic import atomic_path
from sdlab.evaluation.digits import (
    Judge,
    gradient_guidance_effect,
    judged,
    negative_prompt_effect,
    sample_digits,
    strength_effect,
)
from sdlab.evaluation.metrics import diversity
from sdlab.evaluation.seeds import HELD_OUT_SEED, VALIDATION_SEED
from sdlab.pipeline import Pipeline

GUIDANCE_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0)
STRENGTHS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
STRENGTH_MIN_STEPS = round(1 / min(STRENGTHS))  # so that the smallest strength still re-runs one step
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


def _fid_panels(judges: list[Judge]) -> tuple[str, ...]:
    return tuple(f"fid_ratio_{j.name}" for j in judges)


def guidance_sweep(pipe: Pipeline, judges: list[Judge], per_digit: int, **sampling) -> Sweep:
    sampling.pop("guidance_scale", None)
    rows = []
    for scale in GUIDANCE_SCALES:
        gray, wanted = sample_digits(pipe, per_digit, seed=VALIDATION_SEED, guidance_scale=scale, **sampling)
        rows.append({
            "guidance_scale": scale,
            **judged(judges, gray, wanted),
            "diversity": diversity(judges[0].features(gray), wanted),
        })  # fmt: skip
    return Sweep("guidance", "Classifier-free guidance scale", rows, "guidance_scale",
                 ("prompt_accuracy", *_fid_panels(judges), "diversity"))  # fmt: skip


def strength_sweep(pipe: Pipeline, judges: list[Judge], per_digit: int, **sampling) -> Sweep:
    """img2img of held-out real digits prompted to another digit; `per_digit` x 10 images per strength, read by
    the first judge. At least 10 steps, so that the smallest strength (0.1) still runs one denoising step."""
    steps = sampling.get("num_inference_steps") or 10
    sampling = {**sampling, "num_inference_steps": max(steps, STRENGTH_MIN_STEPS)}
    rows = strength_effect(
        pipe, judges[0], strengths=STRENGTHS, n=10 * per_digit, seed=VALIDATION_SEED, **sampling
    )
    return Sweep("strength", "img2img strength (held-out digits prompted to another digit)", rows,
                 "strength", ("keeps_source", "becomes_prompted"))  # fmt: skip


def scheduler_sweep(pipe: Pipeline, judges: list[Judge], per_digit: int, **sampling) -> Sweep:
    sampling = {k: v for k, v in sampling.items() if k not in ("scheduler", "num_inference_steps")}
    rows = []
    for name in SCHEDULERS:
        for steps in STEPS:
            gray, wanted = sample_digits(
                pipe, per_digit, seed=VALIDATION_SEED, scheduler=name, num_inference_steps=steps, **sampling
            )
            rows.append({"scheduler": name, "steps": steps, **judged(judges, gray, wanted)})
    return Sweep("schedulers", "Schedulers x steps", rows, "steps", ("fid_ratio", "prompt_accuracy"),
                 series="scheduler")  # fmt: skip


def guide_sweep(pipe: Pipeline, judges: list[Judge], per_digit: int, **sampling) -> Sweep:
    rows = gradient_guidance_effect(pipe, judges, GUIDE_SCALES, per_digit=per_digit, **sampling)
    accuracy = tuple(f"prompt_accuracy_{j.name}" for j in judges)
    return Sweep("guide", "Gradient guidance, no prompt (--guide-digit D, --guide-scale), guided by the cnn judge",
                 rows, "guide_scale", (*accuracy, "fid_ratio"))  # fmt: skip


# The fast sweep: the cheapest settings whose quality holds under every judge
# sigma intervals: every step; low noise only; a middle band; high noise only, where the paper (Kynkäänniemi
# et al. 2024) found guidance harms diversity most
FAST_INTERVALS = ((0.0, None), (0.0, 1.0), (0.0, 1.5), (0.0, 2.5), (0.3, 2.5), (1.0, None))
# under every judge: accuracy at least, FID / floor and the "thick" negative prompt's change at most
TARGETS = {"prompt_accuracy": 0.99, "fid_ratio": 1.5, "thick_change": -0.15}
FINAL_PER_DIGIT = 100  # 1,000 images for the finalists: a stable FID


@dataclass(frozen=True)
class Grid:
    """The settings a fast sweep screens: every combination within `budget` UNet evaluations per image."""

    name: str
    schedulers: tuple[str, ...]
    steps: tuple[int, ...]
    scales: tuple[float, ...]
    intervals: tuple[tuple[float, float | None], ...]
    budget: int


# the best two solvers at 5-8 steps in the schedulers sweep; at most 10 UNet evaluations per image
FAST = Grid("fast", ("unipc", "dpmpp_2m"), (4, 5, 6, 8), (1.5, 2.0, 3.0, 4.0), FAST_INTERVALS, 10)
# where no setting within 10 meets the targets: the fewest evaluations that do, with UniPC (the fast sweep's best)
FAST_WIDE = Grid("fast-wide", ("unipc",), (8, 10, 12, 15), (1.5, 2.0, 3.0), FAST_INTERVALS, 30)


def fast_sweep(
    pipe: Pipeline, judges: list[Judge], per_digit: int, finalists: int = 6, grid: Grid = FAST, **sampling
) -> Sweep:
    """Scheduler x steps x CFG x guidance interval within `grid.budget` UNet evaluations per image.

    Stage 1 screens every setting within budget on `per_digit` x 10 images (and the negative prompt "thick"
    on 50 sevens); stage 2 measures the `finalists` best (by the worse judge's FID / floor) that met the
    accuracy and negative-prompt targets at stage 1, on 1,000 images (and 100 sevens). Both stages use the
    validation seeds (`seeds` "validation"); stage 2's settings are then measured again on the held-out seeds
    (`seeds` "held-out"), where the chosen default is reported, so that selection bias shows as the gap
    between the two. `meets` marks stage-2 rows meeting every target in `TARGETS` under every judge."""
    from sdlab.sampling.guidance import planned_unet_evaluations

    cache = sampling.get("deep_cache", 1)  # every point as `sdlab eval` samples (--deep-cache)
    rows, seen = [], set()
    for scheduler in grid.schedulers:
        for steps in grid.steps:
            for scale in grid.scales:
                for interval in grid.intervals:
                    evals = planned_unet_evaluations(pipe, scheduler, steps, scale, interval)
                    plan = (scheduler, steps, scale, _guided_steps(pipe, scheduler, steps, interval))
                    if evals > grid.budget or plan in seen:
                        continue
                    seen.add(plan)
                    settings = dict(scheduler=scheduler, num_inference_steps=steps, guidance_scale=scale,
                                    guidance_interval=interval, deep_cache=cache)  # fmt: skip
                    rows.append(_fast_point(pipe, judges, per_digit, 50, settings, evals, stage=1))
    passed = [r for r in rows if r["prompt_accuracy"] >= TARGETS["prompt_accuracy"]
              and r["thick_change"] <= TARGETS["thick_change"]]  # fmt: skip
    for r in sorted(passed, key=lambda r: r["fid_ratio"])[:finalists]:
        settings = {k: r[k] for k in ("scheduler", "num_inference_steps", "guidance_scale")}
        settings["guidance_interval"] = tuple(r["guidance_interval"])
        settings["deep_cache"] = cache
        for seed in (VALIDATION_SEED, HELD_OUT_SEED):
            final = _fast_point(
                pipe, judges, FINAL_PER_DIGIT, 100, settings, r["unet_evaluations"], stage=2, seed=seed
            )
            final["meets"] = not _missed(final)
            rows.append(final)
    return Sweep(grid.name, f"Settings within {grid.budget} UNet evaluations per image (CFG in a sigma interval)",
                 rows, "unet_evaluations", ("fid_ratio", "prompt_accuracy", "thick_change"),
                 series="scheduler")  # fmt: skip


def choose_fast_default(sweep: Sweep) -> tuple[dict | None, dict | None, list[str]]:
    """The default a fast sweep chooses on the validation seeds, its row on the held-out seeds (None in a sweep
    that has none), and the targets that held-out row misses.

    Among stage-2 validation rows: those meeting every target, fewest UNet evaluations then lowest FID ratio;
    failing that, those meeting the accuracy and negative-prompt targets, lowest FID ratio; else None."""
    finals = [r for r in sweep.rows if r.get("stage") == 2 and r.get("seeds") == "validation"]
    meeting = [r for r in finals if r.get("meets")]
    usable = [r for r in finals if not _missed(r) - {"fid_ratio"}]
    if meeting:
        chosen = min(meeting, key=lambda r: (r["unet_evaluations"], r["fid_ratio"]))
    elif usable:
        chosen = min(usable, key=lambda r: (r["fid_ratio"], r["unet_evaluations"]))
    else:
        return None, None, []
    same = lambda r: all(r[k] == chosen[k] for k in _SETTING_KEYS)  # noqa: E731
    held_out = next((r for r in sweep.rows if r.get("seeds") == "held-out" and same(r)), None)
    return chosen, held_out, sorted(_missed(held_out if held_out is not None else chosen))


_SETTING_KEYS = ("scheduler", "num_inference_steps", "guidance_scale", "guidance_interval", "deep_cache")


def _missed(row: dict) -> set[str]:
    return {k for k, v in TARGETS.items() if not (row[k] >= v if k == "prompt_accuracy" else row[k] <= v)}


def _guided_steps(pipe: Pipeline, scheduler: str, steps: int, interval) -> tuple[bool, ...]:
    """Which steps of the schedule an interval guides (two intervals guiding the same steps are one setting)."""
    from sdlab.sampling.guidance import guided_steps
    from sdlab.sampling.schedulers import make_scheduler

    sched = make_scheduler(scheduler, pipe.scheduler_config)
    sched.set_timesteps(steps)
    return tuple(guided_steps(sched.alphas_cumprod, sched.timesteps, interval))


def _fast_point(
    pipe,
    judges,
    per_digit: int,
    sevens: int,
    settings: dict,
    evals: int,
    stage: int,
    seed: int = VALIDATION_SEED,
) -> dict:
    gray, wanted = sample_digits(pipe, per_digit, seed=seed, **settings)
    thick = negative_prompt_effect(pipe, judges, n=sevens, seed=seed, **settings)
    lo, hi = settings["guidance_interval"]
    return {
        "stage": stage,
        "seeds": "validation" if seed == VALIDATION_SEED else "held-out",
        "scheduler": settings["scheduler"],
        "num_inference_steps": settings["num_inference_steps"],
        "guidance_scale": settings["guidance_scale"],
        "guidance_interval": [lo, hi],
        "deep_cache": settings.get("deep_cache", 1),
        "unet_evaluations": evals,
        "images": len(gray),
        **judged(judges, gray, wanted),
        "thick_change": thick["thickness_change"],
    }


SWEEPS = {
    "guidance": guidance_sweep,
    "strength": strength_sweep,
    "schedulers": scheduler_sweep,
    "guide": guide_sweep,
    "fast": fast_sweep,
    "fast-wide": partial(fast_sweep, grid=FAST_WIDE),
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
    """The sweep, its caption and where it was measured (`provenance`: command, machine, date)."""
    import json

    from sdlab.evaluation.provenance import provenance

    return json.dumps({**asdict(sweep), "caption": caption, "provenance": provenance()}, indent=2) + "\n"


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
                xs = [r[sweep.x] for r in rows]
                style = "none" if len(set(xs)) < len(xs) else "-"  # several points per x: a scatter
                ax.plot(xs, [r[y] for r in rows], marker="o", linestyle=style, label=group)
        if y.startswith("fid_ratio"):
            ax.axhline(1.0, color="gray", linestyle="--", label="real-vs-real floor")
            ax.axhline(
                TARGETS["fid_ratio"], color="gray", linestyle=":", label=f"{TARGETS['fid_ratio']}x floor"
            )
            ax.set_yscale("log")
        ax.set_xlabel(sweep.x)
        ax.set_title(y)
        ax.grid(alpha=0.3)
        if sweep.series or y.startswith("fid_ratio"):
            ax.legend(fontsize=7)
    fig.suptitle(f"{sweep.title}\n{caption}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
