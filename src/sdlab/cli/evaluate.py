"""`sdlab eval`: the digits model's numbers, as JSON and a markdown table, plus optional sweeps."""

from __future__ import annotations

import json
from pathlib import Path

from sdlab.atomic import atomic_path
from sdlab.cli.generate import load_model, process_state
from sdlab.cli.options import EvalOptions
from sdlab.errors import InputError
from sdlab.outputs import interval_text


def run_eval(opts: EvalOptions) -> dict:
    from sdlab.evaluation.digits import Judge, evaluate, negative_prompt_effect, strength_effect
    from sdlab.evaluation.sweeps import SWEEPS, write_sweep
    from sdlab.sampling.loop import planned_unet_evaluations
    from sdlab.sampling.schedulers import scheduler_name_from_config
    from sdlab.service.request import parse_guidance_interval

    sweeps = _sweep_names(opts.sweep, SWEEPS)
    if sweeps and opts.vae_decoder:
        raise InputError("--vae-decoder measures the headline numbers; run the sweeps without it")
    for name, value in (("--per-digit", opts.per_digit), ("--sweep-per-digit", opts.sweep_per_digit)):
        if value < 2:
            raise InputError(f"{name} must be at least 2 (FID needs a covariance), got {value}")
    if opts.deep_cache is not None and opts.deep_cache < 1:
        raise InputError(f"--deep-cache must be a positive integer (1: off), got {opts.deep_cache}")
    state, opts = process_state(opts)
    pipe = load_model(opts)
    judge = Judge.load()
    defaults = pipe.sampling_defaults
    interval = parse_guidance_interval(opts.guidance_interval) or defaults.get(
        "guidance_interval", (0.0, None)
    )
    sampling = dict(
        num_inference_steps=opts.num_inference_steps or defaults.get("num_inference_steps", 30),
        guidance_scale=opts.guidance_scale
        if opts.guidance_scale is not None
        else defaults.get("guidance_scale", 7.5),
        scheduler=opts.scheduler
        or defaults.get("scheduler")
        or scheduler_name_from_config(pipe.scheduler_config),
        guidance_interval=list(interval),
        deep_cache=defaults.get("deep_cache", 1) if opts.deep_cache is None else opts.deep_cache,
    )
    decoder = {}
    if opts.vae_decoder:  # the tiny decoder's cost in quality: every image below decoded with it
        from sdlab.loading.decoder import check_decoder_fits, load_vae_decoder, vae_decoder_folder

        folder = vae_decoder_folder(opts.vae_decoder, pipe.source)
        decoder = {"vae_decoder": load_vae_decoder(folder, pipe.device, pipe.dtype)}
        check_decoder_fits(
            decoder["vae_decoder"], pipe.vae.config.latent_channels, pipe.vae_scale_factor, opts.vae_decoder
        )
    evaluations = planned_unet_evaluations(
        pipe, sampling["scheduler"], sampling["num_inference_steps"], sampling["guidance_scale"], interval
    )
    report = {
        "model": _shown(pipe.source),
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "sampling": sampling,
        "unet_evaluations": evaluations,
        "vae_decoder": opts.vae_decoder,
        "headline": evaluate(pipe, judge, opts.per_digit, **sampling, **decoder),
        # negative prompts act through guidance: measured at the chosen scale and at SD's usual 7.5
        "negative_prompt": [
            {
                "guidance_scale": scale,
                **negative_prompt_effect(pipe, judge, **{**sampling, "guidance_scale": scale}, **decoder),
            }
            for scale in dict.fromkeys([sampling["guidance_scale"], 7.5])
        ],
        "strength": strength_effect(pipe, judge, **sampling, **decoder),
    }
    out = Path(opts.output)
    main = state.is_main_process  # every process generates its share; the main one writes
    if main:
        with atomic_path(out / "eval.json") as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        with atomic_path(out / "eval.md") as tmp:
            tmp.write_text(markdown(report))
        print(markdown(report))
    for name in sweeps:
        caption = f"{sweep_settings(name, sampling)} {opts.sweep_per_digit * 10} images per point."
        if name == "fast":
            caption = (
                f"Stage 1: {opts.sweep_per_digit * 10} images and 50 sevens per setting; stage 2: the best "
                "that met the accuracy and negative-prompt targets, at 1,000 images and 100 sevens."
            )
        sweep = SWEEPS[name](pipe, judge, opts.sweep_per_digit, **sampling)
        if main:
            for path in write_sweep(sweep, out, caption):
                print(path)
    return report


def _shown(path: str) -> str:
    """A model path as the report shows it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _sweep_names(text: str | None, known: dict) -> list[str]:
    if not text:
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"unknown sweep {unknown[0]!r}; choose from {', '.join(known)} or all")
    return names


def sweep_settings(name: str, s: dict) -> str:
    """The settings a sweep holds fixed (the varied one is its x axis)."""
    scheduler = s["scheduler"] or "default scheduler"
    return {
        "guidance": f"{scheduler}, {s['num_inference_steps']} steps.",
        "schedulers": f"CFG {s['guidance_scale']}.",
        "guide": f"{scheduler}, {s['num_inference_steps']} steps, empty prompt, no CFG.",
    }.get(name, describe(s))


def describe(s: dict) -> str:
    interval = s.get("guidance_interval") or [0.0, None]
    where = (
        ""
        if interval_text(interval) is None
        else f" at sigma in ({interval_text(interval).replace(' to ', ', ')}]"
    )
    cache = f", deep cache every {s['deep_cache']} steps" if s.get("deep_cache", 1) > 1 else ""
    return (
        f"{s['scheduler'] or 'default scheduler'}, {s['num_inference_steps']} steps, CFG {s['guidance_scale']}"
        f"{where}{cache}."
    )


def markdown(r: dict) -> str:
    h = r["headline"]
    lines = [
        f"Model `{r['model']}` ({r.get('dtype', 'float32')}), {describe(r['sampling'])}"
        + (f" Decoded with the tiny decoder `{r['vae_decoder']}`." if r.get("vae_decoder") else ""),
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| UNet evaluations per image | {r.get('unet_evaluations', '')} |",
        f"| prompt accuracy ({h['samples']} images) | {h['prompt_accuracy']:.3f} |",
        f"| classifier-FID vs held-out digits | {h['fid']:.2f} |",
        f"| real-vs-real floor (same count) | {h['fid_floor_real_vs_real']:.2f} |",
        f"| FID / floor | {h['fid'] / h['fid_floor_real_vs_real']:.2f} |",
        f"| diversity (generated / real) | {h['diversity']:.2f} / {h['diversity_real']:.2f} |",
        "",
        '| negative prompt "thick" on "a handwritten digit 7" | stroke thickness change | accuracy with / without |',
        "| --- | --- | --- |",
    ]
    lines += [
        f"| CFG {n['guidance_scale']} | {n['thickness_change'] * 100:+.1f}% | "
        f"{n['with']['accuracy']:.2f} / {n['without']['accuracy']:.2f} |"
        for n in r["negative_prompt"]
    ]
    lines += [
        "",
        "| img2img strength | keeps the source digit | becomes the prompted digit |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {row['strength']} | {row['keeps_source']:.2f} | {row['becomes_prompted']:.2f} |"
        for row in r["strength"]
    ]
    return "\n".join(lines) + "\n"
