"""`sdlab eval`: the digits model's numbers, as JSON and a markdown table, plus optional sweeps."""

from __future__ import annotations

from pathlib import Path

from sdlab.atomic import atomic_path
from sdlab.cli.generate import load_model, process_state
from sdlab.cli.options import EvalOptions
from sdlab.errors import InputError
from sdlab.outputs import interval_text
from sdlab.sampling.params import PACKAGE


def run_eval(opts: EvalOptions) -> dict:
    from sdlab.evaluation.digits import (
        evaluate,
        judge_descriptions,
        load_judges,
        max_per_digit,
        negative_prompt_effect,
        strength_effect,
    )
    from sdlab.evaluation.sweeps import SWEEPS, write_sweep
    from sdlab.sampling.guidance import planned_unet_evaluations
    from sdlab.sampling.params import SamplingParams
    from sdlab.sampling.schedulers import scheduler_name_from_config

    sweeps = _sweep_names(opts.sweep, SWEEPS)
    if sweeps and opts.vae_decoder:
        raise InputError("--vae-decoder measures the headline numbers; run the sweeps without it")
    most = max_per_digit()
    for name, value in (("--per-digit", opts.per_digit), ("--sweep-per-digit", opts.sweep_per_digit)):
        if value < 2:
            raise InputError(f"{name} must be at least 2 (FID needs a covariance), got {value}")
        if value > most:
            raise InputError(
                f"{name} can be at most {most} (FID's floor needs as many real training digits of each digit), "
                f"got {value}"
            )
    asked = SamplingParams(**{name: getattr(opts, name) for name in PACKAGE}).validate()
    state, opts = process_state(opts)
    pipe = load_model(opts)
    judges = load_judges()
    # the model's recommendation as `generate` applies it: its interval and cache only at its settings
    resolved = asked.resolve(pipe.recommended, scheduler_name_from_config(pipe.scheduler_config))
    sampling = resolved.package()
    decoder = {}
    if opts.vae_decoder:  # the tiny decoder's cost in quality: every image below decoded with it
        from sdlab.loading.decoder import check_decoder_fits, load_vae_decoder, vae_decoder_folder

        folder = vae_decoder_folder(opts.vae_decoder, pipe.source)
        decoder = {"vae_decoder": load_vae_decoder(folder, pipe.device, pipe.dtype)}
        check_decoder_fits(
            decoder["vae_decoder"], pipe.vae.config.latent_channels, pipe.vae_scale_factor, opts.vae_decoder
        )
    evaluations = planned_unet_evaluations(
        pipe,
        resolved.scheduler,
        resolved.num_inference_steps,
        resolved.guidance_scale,
        resolved.guidance_interval,
    )
    report = {
        "model": _shown(pipe.source),
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "compile": pipe.compiled,
        "sampling": resolved.to_json(),
        "unet_evaluations": evaluations,
        "vae_decoder": opts.vae_decoder,
        "judges": judge_descriptions(),
        "headline": evaluate(pipe, judges, opts.per_digit, seed=opts.seed, **sampling, **decoder),
        # negative prompts act through guidance: measured at the chosen scale and at SD's usual 7.5 (which,
        # as `generate --cfg 7.5` would, leaves the model's interval and cache out unless they were asked for)
        "negative_prompt": [
            {
                "guidance_scale": scale,
                **negative_prompt_effect(
                    pipe, judges, seed=opts.seed, **_at_scale(asked, scale, pipe), **decoder
                ),
            }
            for scale in dict.fromkeys([resolved.guidance_scale, 7.5])
        ],
        "strength": strength_effect(pipe, judges[0], seed=opts.seed, **sampling, **decoder),
    }
    out = Path(opts.output)
    main = state.is_main_process  # every process generates its share; the main one writes
    if main:
        from sdlab.evaluation.provenance import write_measurement

        write_measurement(out / "eval.json", report)
        with atomic_path(out / "eval.md") as tmp:
            tmp.write_text(markdown(report))
        print(markdown(report))
    for name in sweeps:
        caption = (
            f"{sweep_settings(name, sampling)} {opts.sweep_per_digit * 10} images per point (validation seeds); the "
            "model's guidance interval and deep cache only at its own sampler, steps and CFG, as `sdlab generate` "
            "applies them."
        )
        if name.startswith("fast"):
            caption = (
                f"Stage 1: {opts.sweep_per_digit * 10} images and 50 sevens per setting; stage 2: the best that met "
                "the accuracy and negative-prompt targets, at 1,000 images and 100 sevens, on the validation seeds "
                "(where they were chosen) and the held-out seeds (where they are reported). Worse of the judges."
            )
        # only what was asked: each point resolves the model's recommendation as `generate` would for it
        sweep = SWEEPS[name](pipe, judges, opts.sweep_per_digit, **asked.package())
        if main:
            for path in write_sweep(sweep, out, caption):
                print(path)
    return report


def _at_scale(asked, scale: float, pipe) -> dict:
    """The sampling package `generate` runs for the asked settings at CFG `scale`."""
    from sdlab.sampling.schedulers import scheduler_name_from_config

    at_scale = asked.replace(guidance_scale=scale)
    return at_scale.resolve(pipe.recommended, scheduler_name_from_config(pipe.scheduler_config)).package()


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
    from sdlab.evaluation.sweeps import STRENGTH_MIN_STEPS

    scheduler = s["scheduler"] or "default scheduler"
    return {
        "guidance": f"{scheduler}, {s['num_inference_steps']} steps.",
        "schedulers": f"CFG {s['guidance_scale']}.",
        "guide": f"{scheduler}, {s['num_inference_steps']} steps, empty prompt, no CFG.",
        "strength": f"{scheduler}, {max(s['num_inference_steps'], STRENGTH_MIN_STEPS)} steps, CFG {s['guidance_scale']}.",
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
    judges = h["judges"]
    names = list(judges)
    row = lambda label, cell: f"| {label} | " + " | ".join(cell(judges[n]) for n in names) + " |"  # noqa: E731
    worst = h["worst_judge"]
    lines = [
        f"Model `{r['model']}` ({r.get('dtype', 'float32')}), {describe(r['sampling'])}"
        + (f" Decoded with the tiny decoder `{r['vae_decoder']}`." if r.get("vae_decoder") else ""),
        f"{h['samples']} images, seeds {h['seed']}-{h['seed'] + h['samples'] - 1}; "
        f"{r.get('unet_evaluations', '')} UNet evaluations per image.",
        "",
        f"**Worse of the judges: prompt accuracy {h['prompt_accuracy']:.3f} ({worst['prompt_accuracy']}), "
        f"FID / floor {h['fid_ratio']:.2f} ({worst['fid_ratio']}).**",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|" + " --- |" * (len(names) + 1),
        row("prompt accuracy", lambda j: f"{j['prompt_accuracy']:.3f}"),
        row("classifier-FID vs held-out digits", lambda j: f"{j['fid']:.3g}"),
        row("real-vs-real floor (same count)", lambda j: f"{j['fid_floor_real_vs_real']:.3g}"),
        row("FID / floor", lambda j: f"{j['fid_ratio']:.2f}"),
        row(
            "KID × 1000 (real-vs-real)",
            lambda j: f"{j['kid'] * 1000:.2f} ({j['kid_real_vs_real'] * 1000:.2f})",
        ),
        row(
            "precision / recall (real digits' own)",
            lambda j: (
                f"{j['precision']:.3f} / {j['recall']:.3f} ({j['precision_real']:.3f} / {j['recall_real']:.3f})"
            ),
        ),
        row("diversity (generated / real)", lambda j: f"{j['diversity']:.3g} / {j['diversity_real']:.3g}"),
        "",
        f"Stroke thickness {h['thickness']:.2f} px, slant {h['slant']:.3f}, size {h['size']:.1f} px (from the pixels).",
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
        f"| img2img strength ({names[0]} judge) | keeps the source digit | becomes the prompted digit |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {row['strength']} | {row['keeps_source']:.2f} | {row['becomes_prompted']:.2f} |"
        for row in r["strength"]
    ]
    lines += ["", "Judges:"] + [f"- **{name}**: {text}" for name, text in r.get("judges", {}).items()]
    return "\n".join(lines) + "\n"
