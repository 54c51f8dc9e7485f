"""`sdlab eval`: the digits model's numbers, as JSON and a markdown table."""

from __future__ import annotations

import json
from pathlib import Path

from sdlab.cli.generate import load_model
from sdlab.cli.options import EvalOptions
from sdlab.training.atomic import atomic_path


def run_eval(opts: EvalOptions) -> dict:
    from sdlab.evaluation.digits import Judge, evaluate, negative_prompt_effect, strength_effect

    if opts.per_digit < 2:
        from sdlab.errors import InputError

        raise InputError(f"--per-digit must be at least 2 (FID needs a covariance), got {opts.per_digit}")
    pipe = load_model(opts)
    judge = Judge.load()
    sampling = dict(
        num_inference_steps=opts.num_inference_steps,
        guidance_scale=opts.guidance_scale,
        scheduler=opts.scheduler,
    )
    report = {
        "model": pipe.source,
        "sampling": sampling,
        "headline": evaluate(pipe, judge, opts.per_digit, **sampling),
        "negative_prompt": negative_prompt_effect(pipe, judge, **sampling),
        "strength": strength_effect(pipe, judge, **sampling),
    }
    out = Path(opts.output)
    with atomic_path(out / "eval.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    with atomic_path(out / "eval.md") as tmp:
        tmp.write_text(markdown(report))
    print(markdown(report))
    return report


def markdown(r: dict) -> str:
    h, neg = r["headline"], r["negative_prompt"]
    s = r["sampling"]
    lines = [
        f"Model `{r['model']}`, {s['scheduler'] or 'default scheduler'}, {s['num_inference_steps']} steps, CFG {s['guidance_scale']}.",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| prompt accuracy ({h['samples']} images) | {h['prompt_accuracy']:.3f} |",
        f"| classifier-FID vs held-out digits | {h['fid']:.2f} |",
        f"| real-vs-real floor (same count) | {h['fid_floor_real_vs_real']:.2f} |",
        f"| FID / floor | {h['fid'] / h['fid_floor_real_vs_real']:.2f} |",
        f"| diversity (generated / real) | {h['diversity']:.2f} / {h['diversity_real']:.2f} |",
        f'| negative prompt "thick": stroke thickness change | {neg["thickness_change"] * 100:+.1f}% '
        f"(accuracy {neg['with']['accuracy']:.2f} with, {neg['without']['accuracy']:.2f} without) |",
        "",
        "| img2img strength | keeps the source digit | becomes the prompted digit |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {row['strength']} | {row['keeps_source']:.2f} | {row['becomes_prompted']:.2f} |"
        for row in r["strength"]
    ]
    return "\n".join(lines) + "\n"
