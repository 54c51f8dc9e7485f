"""The digits model's sampling settings and speed-ups under every judge, on the held-out seeds, in one run.

Rows, each `--per-digit` x 10 images (1,000 by default) on the held-out seeds (`sdlab eval`'s), plus the
negative prompt "thick" on 100 sevens (`--sevens`), read by every judge (`sdlab.evaluation.digits.JUDGES`):

- the defaults (the model's `sdlab.json`), also with the digit written as a word (wording the sweeps never
  chose on), and each speed-up applied to them or taken away: the deep cache, the guidance interval,
  bfloat16, the tiny decoder (and the LCM model with `--lcm DIR`);
- the settings the judges were first compared on: the earlier defaults (UniPC 6 steps, CFG 3 at
  sigma <= 1.5, deep cache 2), with CFG at every step, at 20 steps, the defaults before those (DPM++ 2M
  30 steps, CFG 1.5), unguided, and diffusers' default call (the model's scheduler, 50 steps, CFG 7.5).

A speed-up holds where every judge agrees that quality holds: FID / floor within 10 % of the same setting
without it, and prompt accuracy not lower. Each row also gives ms per image, timed in this process.

    python scripts/eval_judges.py                 # ~35 min on 2 CPU cores; writes runs/eval/judges.{json,md}
    python scripts/eval_judges.py --per-digit 20  # a quick look, 200 images per row
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

EARLIER = dict(
    scheduler="unipc", num_inference_steps=6, guidance_scale=3.0, guidance_interval=(0.0, 1.5), deep_cache=2
)
PLAIN = dict(
    guidance_interval=(0.0, None), deep_cache=1
)  # CFG at every step, no cache: said, not left to the model
FID_TOLERANCE = 0.10  # a speed-up may cost at most this share of FID / floor under any judge


def rows_to_measure(defaults: dict, lcm: str | None) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """(rows, speed-ups): each row a label, sampling settings and how it is loaded; each speed-up (name, the row
    with it, the row without it). Rows with equal settings are measured once."""
    every_step = {**defaults, "guidance_interval": (0.0, None)}
    interval = (
        defaults["guidance_interval"] if tuple(defaults["guidance_interval"]) != (0.0, None) else (0.0, 1.5)
    )
    cache = defaults["deep_cache"] if defaults["deep_cache"] > 1 else 2
    rows = {
        "defaults": ("the defaults (sdlab.json)", defaults, {}),
        "cache": (f"defaults, deep cache {cache}", {**defaults, "deep_cache": cache}, {}),
        "no-cache": ("defaults, no deep cache", {**defaults, "deep_cache": 1}, {}),
        "interval": (
            f"defaults, CFG only at sigma <= {interval[1]}",
            {**defaults, "guidance_interval": interval, "deep_cache": 1},
            {},
        ),
        "every-step": ("defaults, CFG at every step", {**every_step, "deep_cache": 1}, {}),
        "wording": (
            'defaults, held-out wording ("a handwritten digit seven")',
            defaults,
            {"template": "a handwritten digit {word}"},
        ),  # fmt: skip
        "bf16": ("defaults, bfloat16", defaults, {"dtype": "bfloat16"}),
        "tiny": ("defaults, tiny decoder", defaults, {"vae_decoder": "tiny"}),
        "earlier": ("earlier defaults (UniPC 6, CFG 3 at sigma <= 1.5, deep cache 2)", EARLIER, {}),
        "earlier-no-cache": ("earlier defaults, no deep cache", {**EARLIER, "deep_cache": 1}, {}),
        "earlier-every-step": (
            "UniPC 6, CFG 3 at every step, no cache",
            {**EARLIER, "guidance_interval": (0.0, None), "deep_cache": 1},
            {},
        ),
        "earlier-20": (
            "UniPC 20, CFG 3 at sigma <= 1.5, no cache",
            {**EARLIER, "num_inference_steps": 20, "deep_cache": 1},
            {},
        ),
        "dpmpp-30": (
            "defaults before those (DPM++ 2M 30, CFG 1.5)",
            dict(scheduler="dpmpp_2m", num_inference_steps=30, guidance_scale=1.5, **PLAIN),
            {},
        ),
        "unguided": (
            "UniPC 6, unguided",
            dict(scheduler="unipc", num_inference_steps=6, guidance_scale=1.0, **PLAIN),
            {},
        ),
        "diffusers": (
            "diffusers' default call (the model's scheduler, 50 steps, CFG 7.5)",
            dict(scheduler=None, num_inference_steps=50, guidance_scale=7.5, **PLAIN),
            {},
        ),
    }
    speedups = [
        ("deep cache", "cache", "no-cache" if defaults["deep_cache"] > 1 else "defaults"),
        ("guidance interval", "interval", "every-step"),
        ("bfloat16", "bf16", "defaults"),
        ("tiny decoder", "tiny", "defaults"),
    ]
    if lcm:
        for steps in (1, 2, 4):
            rows[f"lcm-{steps}"] = (
                f"LCM, {steps} step{'s' * (steps > 1)}",
                {"num_inference_steps": steps},
                {"model": lcm},
            )
            speedups.append((f"LCM {steps} step{'s' * (steps > 1)}", f"lcm-{steps}", "defaults"))
    return [
        {"key": k, "label": label, "sampling": s, "load": load} for k, (label, s, load) in rows.items()
    ], speedups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-digit", type=int, default=100, help="images per digit per row")
    parser.add_argument(
        "--sevens", type=int, default=100, help='sevens per row for the negative prompt "thick"'
    )
    parser.add_argument("--lcm", help="an LCM model folder made by `sdlab distill` (its OUTPUT/model)")
    parser.add_argument("--rows", help="only these rows (comma-separated keys), for a quick look")
    parser.add_argument("-o", "--output", default="runs/eval", help="folder for judges.json and judges.md")
    args = parser.parse_args()

    import sdlab
    from sdlab.evaluation.digits import evaluate, judge_descriptions, load_judges, negative_prompt_effect
    from sdlab.evaluation.provenance import write_measurement
    from sdlab.loading.decoder import load_vae_decoder, vae_decoder_folder
    from sdlab.sampling.guidance import planned_unet_evaluations
    from sdlab.sampling.params import SamplingParams
    from sdlab.sampling.schedulers import scheduler_name_from_config

    judges = load_judges()
    pipes: dict = {}

    def pipe_for(load: dict):
        key = (load.get("model"), load.get("dtype", "float32"))
        if key not in pipes:
            pipes[key] = sdlab.load_pipeline(key[0], dtype=key[1])
            pipes[key].generate(["a handwritten digit 0"] * 10, seed=list(range(10)))  # warm-up, not timed
        return pipes[key]

    base = pipe_for({})
    asked = SamplingParams().resolve(base.recommended, scheduler_name_from_config(base.scheduler_config))
    defaults = {k: v for k, v in asked.package().items() if k in ("scheduler", "num_inference_steps",
                "guidance_scale", "guidance_interval", "deep_cache")}  # fmt: skip
    defaults["guidance_interval"] = tuple(defaults["guidance_interval"] or (0.0, None))
    rows, speedups = rows_to_measure(defaults, args.lcm)
    if args.rows:
        wanted = set(args.rows.split(","))
        rows = [r for r in rows if r["key"] in wanted]
    measured, done = [], {}
    for row in rows:
        pipe = pipe_for(row["load"])
        sampling = dict(row["sampling"])
        if "model" in row["load"]:  # the LCM model samples at its own recommendation
            sampling = (
                SamplingParams(**sampling)
                .resolve(pipe.recommended, scheduler_name_from_config(pipe.scheduler_config))
                .package()
            )
        extra = {}
        if row["load"].get("vae_decoder"):
            extra["vae_decoder"] = load_vae_decoder(
                vae_decoder_folder(row["load"]["vae_decoder"], pipe.source), pipe.device, pipe.dtype
            )
        identity = repr((sorted(sampling.items()), sorted(row["load"].items())))
        if identity in done:
            measured.append({**done[identity], "key": row["key"], "label": row["label"]})
            continue
        scheduler = sampling.get("scheduler") or scheduler_name_from_config(pipe.scheduler_config)
        evals = planned_unet_evaluations(
            pipe, scheduler, sampling["num_inference_steps"], sampling.get("guidance_scale") or 1.0,
            sampling.get("guidance_interval") or (0.0, None),
        )  # fmt: skip
        template = {"template": row["load"]["template"]} if "template" in row["load"] else {}
        headline = evaluate(pipe, judges, args.per_digit, **template, **sampling, **extra)
        thick = negative_prompt_effect(pipe, judges, n=args.sevens, **sampling, **extra)
        result = {
            "key": row["key"],
            "label": row["label"],
            "sampling": {k: list(v) if isinstance(v, tuple) else v for k, v in sampling.items()},
            "load": row["load"],
            "scheduler": scheduler,
            "unet_evaluations": evals,
            "ms_per_image": 1000 * headline["sampling_seconds"] / headline["samples"],
            "headline": headline,
            "thick_change": thick["thickness_change"],
        }
        done[identity] = result
        measured.append(result)
        print(_line(result), flush=True)
    by_key = {r["key"]: r for r in measured}
    verdicts = [
        _verdict(name, by_key[a], by_key[b]) for name, a, b in speedups if a in by_key and b in by_key
    ]
    report = {
        "judges": judge_descriptions(),
        "per_digit": args.per_digit,
        "sevens": args.sevens,
        "defaults": {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()},
        "rows": measured,
        "speedups": verdicts,
    }
    out = Path(args.output)
    write_measurement(out / "judges.json", report)
    (out / "judges.md").write_text(markdown(report))
    print(markdown(report))


def _verdict(name: str, with_it: dict, without: dict) -> dict:
    """Does quality hold with the speed-up, under every judge? FID / floor within `FID_TOLERANCE`, accuracy not
    lower."""
    judges = {}
    for judge, w in with_it["headline"]["judges"].items():
        wo = without["headline"]["judges"][judge]
        judges[judge] = {
            "fid_change": w["fid_ratio"] / wo["fid_ratio"] - 1,
            "accuracy_change": w["prompt_accuracy"] - wo["prompt_accuracy"],
            "holds": w["fid_ratio"] <= (1 + FID_TOLERANCE) * wo["fid_ratio"]
            and w["prompt_accuracy"] >= wo["prompt_accuracy"],
        }
    return {
        "speedup": name,
        "with": with_it["key"],
        "without": without["key"],
        "time_saved": 1 - with_it["ms_per_image"] / without["ms_per_image"],
        "judges": judges,
        "holds": all(j["holds"] for j in judges.values()),
    }


def _line(r: dict) -> str:
    h = r["headline"]
    cells = " ".join(f"{n} {j['prompt_accuracy']:.3f}/{j['fid_ratio']:.2f}" for n, j in h["judges"].items())
    return f"{r['label']}: {r['unet_evaluations']} evals, {r['ms_per_image']:.1f} ms/image, {cells}, thick {r['thick_change']:+.1%}"


def markdown(report: dict) -> str:
    names = list(report["judges"])
    head = " | ".join(f"{n}: accuracy | {n}: FID / floor" for n in names)
    lines = [
        f'{report["per_digit"] * 10} images per row on the held-out seeds; "thick" on {report["sevens"]} sevens. '
        "Each judge's prompt accuracy and FID / its own real-vs-real floor.",
        "",
        f'| setting | UNet evals | ms / image | {head} | "thick" |',
        "|" + " --- |" * (4 + 2 * len(names)),
    ]
    for r in report["rows"]:
        judges = r["headline"]["judges"]
        cells = " | ".join(
            f"{judges[n]['prompt_accuracy']:.3f} | {judges[n]['fid_ratio']:.2f}" for n in names
        )
        lines.append(
            f"| {r['label']} | {r['unet_evaluations']} | {r['ms_per_image']:.1f} | {cells} | {r['thick_change']:+.1%} |"
        )
    lines += ["", "| speed-up | time saved | " + " | ".join(f"{n}: FID change, accuracy change" for n in names) + " | holds |",
              "|" + " --- |" * (3 + len(names))]  # fmt: skip
    for v in report["speedups"]:
        cells = " | ".join(
            f"{v['judges'][n]['fid_change']:+.1%}, {v['judges'][n]['accuracy_change']:+.3f}" for n in names
        )
        lines.append(
            f"| {v['speedup']} | {v['time_saved']:.0%} | {cells} | {'yes' if v['holds'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
