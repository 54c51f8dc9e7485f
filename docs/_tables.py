"""The docs' timing and quality tables, rendered from the JSON that sdlab's benchmark, demo and eval commands write.

A page asks for a table with a comment on a line of its own, `<!-- table: NAME -->`; the docs build (`_hooks.py`)
puts the table there, followed by a line naming the command that wrote the file, the machine (CPU, cores,
whether it has native bfloat16, the GPU) and the date. Files written before the commands recorded their machine
say so, with the date git last changed them. To refresh a table, run its command and copy its JSON over the
file named here (the commands write to `runs/`, never over the docs).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

DOCS = Path(__file__).parent
ROOT = DOCS.parent


def _load(path: str) -> dict:
    return json.loads((DOCS / path).read_text())


def _table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _committed(path: str) -> str:
    try:
        out = subprocess.run(
            ["git", "log", "--follow", "--diff-filter=AM", "-1", "--format=%cs", "--", str(DOCS / path)],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        return out.stdout.strip() or "not yet committed"
    except OSError:
        return "unknown"


def provenance_line(path: str, data: dict, command: str) -> str:
    """One line under a table: its command, machine and date, from the file's `provenance` record (or the
    older `machine`/`cpu` fields some files carry)."""
    p = data.get("provenance")
    if p:
        bf16 = "native bfloat16" if p.get("native_bfloat16") else "no native bfloat16"
        gpu = f", {p['gpu']}" if p.get("gpu") else ""
        where = f"{p['cpu']}, {p['cores']} cores, {bf16}{gpu}; torch {p['torch']}"
        return f"*Command: `{p['command']}` · {where} · {p['date']} · data: `docs/{path}`*\n"
    legacy = data.get("machine")
    if isinstance(legacy, dict):
        where, date = (
            f"{legacy.get('cpu')}, {legacy.get('cores')} cores; torch {legacy.get('torch')}",
            legacy["date"],
        )
    elif isinstance(legacy, str):
        where, date = f"{legacy}; torch {data.get('torch')}", data.get("date", _committed(path))
    elif "cpu" in data:
        bf16 = "native bfloat16" if data.get("native_bfloat16") else "no native bfloat16"
        where, date = (
            f"{data['cpu']}, {data.get('threads')} threads, {bf16}",
            f"file last changed {_committed(path)}",
        )
    elif "cpu_bf16" in data:
        bf16 = "native bfloat16" if data["cpu_bf16"] else "no native bfloat16"
        where, date = (
            f"{data.get('threads')} threads, {bf16}; torch {data.get('torch')}",
            f"file last changed {_committed(path)}",
        )
    else:
        where, date = (
            "machine not recorded (written before runs recorded it)",
            f"file last changed {_committed(path)}",
        )
    return f"*Command: `{command}` · {where} · {date} · data: `docs/{path}`*\n"


def _pct(x: float) -> str:
    return f"{x * 100:+.1f} %"


def eval_headline() -> str:
    path = "eval/eval.json"
    d = _load(path)
    h, neg = d["headline"], d["negative_prompt"]
    s = d["sampling"]
    judges = h["judges"]
    names = list(judges)
    per_judge = lambda label, cell: [label, *(cell(judges[n]) for n in names)]  # noqa: E731
    rows = [
        per_judge(f"prompt accuracy ({h['samples']:,} images)", lambda j: f"{j['prompt_accuracy']:.3f}"),
        per_judge("classifier-FID / real-vs-real floor",
                  lambda j: f"{j['fid']:.3g} / {j['fid_floor_real_vs_real']:.3g} = **{j['fid_ratio']:.2f}×**"),
        per_judge("KID × 1000, generated (real-vs-real)",
                  lambda j: f"{j['kid'] * 1000:.2f} ({j['kid_real_vs_real'] * 1000:.2f})"),
        per_judge("precision / recall, generated (real-vs-real)",
                  lambda j: f"{j['precision']:.3f} / {j['recall']:.3f} ({j['precision_real']:.3f} / {j['recall_real']:.3f})"),
        per_judge("diversity, generated / real", lambda j: f"{j['diversity']:.3g} / {j['diversity_real']:.3g}"),
    ]  # fmt: skip
    blank = [""] * (len(names) - 1)
    rows += [
        [f'negative prompt "thick": stroke thickness at CFG {n["guidance_scale"]:g}', _pct(n["thickness_change"]), *blank]
        for n in neg
    ]  # fmt: skip
    rows += [
        [f"img2img to another digit, strength {r['strength']:g}: keeps the source / becomes the prompted",
         f"{r['keeps_source']:.2f} / {r['becomes_prompted']:.2f} ({names[0]})", *blank]
        for r in d["strength"]
    ]  # fmt: skip
    interval = s.get("guidance_interval")
    setting = (
        f"{s['scheduler']}, {s['num_inference_steps']} steps, CFG {s['guidance_scale']:g}"
        + (f" at σ ≤ {interval[1]:g}" if interval and interval[1] else "")
        + f", deep cache {s.get('deep_cache', 1)}, {d['dtype']}: {d['unet_evaluations']} UNet evaluations per image"
    )
    worst = h["worst_judge"]
    return (
        f"Settings: {setting}. Held-out seeds {h['seed']}–{h['seed'] + h['samples'] - 1}.\n\n"
        f"**Worse of the judges: prompt accuracy {h['prompt_accuracy']:.3f} ({worst['prompt_accuracy']}), "
        f"FID / floor {h['fid_ratio']:.2f}× ({worst['fid_ratio']}).**\n\n"
        + _table(["measure", *names], rows)
        + "\n"
        + provenance_line(path, d, "sdlab eval -o docs/eval --per-digit 100")
    )


def eval_judges() -> str:
    path = "eval/judges.json"
    d = _load(path)
    names = list(d["judges"])
    shown = [r for i, r in enumerate(d["rows"]) if all(r["headline"] != e["headline"] for e in d["rows"][:i])]
    rows = [
        [r["label"], r["unet_evaluations"], f"{r['ms_per_image']:.1f}",
         *(f"{r['headline']['judges'][n]['prompt_accuracy']:.3f} / {r['headline']['judges'][n]['fid_ratio']:.2f}×"
           for n in names),
         _pct(r["thick_change"])]
        for r in shown  # a row whose settings equal an earlier one's was measured once
    ]  # fmt: skip
    table = _table(["setting", "UNet evals", "ms / image", *(f"{n}: accuracy / FID÷floor" for n in names),
                    '"thick"'], rows)  # fmt: skip
    verdicts = [
        [v["speedup"], f"{v['time_saved']:.0%}",
         *(f"{_pct(v['judges'][n]['fid_change'])}, {v['judges'][n]['accuracy_change']:+.3f}" for n in names),
         "**holds**" if v["holds"] else "no"]
        for v in d["speedups"]
    ]  # fmt: skip
    speedups = _table(["speed-up", "time saved", *(f"{n}: FID, accuracy change" for n in names), "verdict"],
                      verdicts)  # fmt: skip
    command = "python scripts/eval_judges.py"
    return (
        f'{d["per_digit"] * 10:,} images per row, held-out seeds; "thick" on {d["sevens"]} sevens.\n\n'
        + table
        + "\nEach speed-up against the same setting without it (holds: FID ÷ floor within 10 % and accuracy not "
        "lower, under every judge):\n\n" + speedups + "\n" + provenance_line(path, d, command)
    )


def demo_finetune(name: str = "finetune") -> str:
    path = f"data/demos/{name}.json"
    d = _load(path)
    share = "domain_share" if "domain_share" in d["base"] else "italic_share"
    rows = [["base model", f"{d['base'][share]:.2f}", f"{d['base']['prompt_accuracy']:.2f}", "—", "—"]]
    for key, label in (("full", "full fine-tune"), ("lora", f"LoRA rank {d['lora'].get('rank', '')}")):
        r = d[key]
        params = f"{r['trainable_share'] * 100:.1f} %" if "trainable_share" in r else "100 %"
        rows.append([label, f"**{r[share]:.2f}**", f"{r['prompt_accuracy']:.2f}", params,
                     f"{r['seconds'] / 60:.1f} min ({r['steps']} steps)"])  # fmt: skip
    what = d.get("domain", "italic")
    total = f" The whole script took {d['total_seconds'] / 60:.1f} min." if "total_seconds" in d else ""
    return (
        _table(
            [
                "model",
                f"{what} share (plain prompts)",
                "prompt accuracy",
                "trainable params",
                "training time",
            ],
            rows,
        )
        + f"\n{d['base']['images']} images per row.{total}\n\n"
        + provenance_line(
            path, d, f"python scripts/demo_finetune.py{'' if name == 'finetune' else ' --domain italic'}"
        )
    )


def demo_textual_inversion(name: str = "textual_inversion") -> str:
    path = f"data/demos/{name}.json"
    d = _load(path)
    rows = []
    for key in ("plain", "control", "token"):
        r = d[key]
        prompt = r["prompt"].replace("{d}", "D").replace("<", "&lt;").replace(">", "&gt;")
        rows.append([prompt + (" (control)" if key == "control" else ""), f"{r['mean_size']:.1f}",
                     f"{r['mean_aspect']:.2f}", f"{r['prompt_accuracy']:.2f}"])  # fmt: skip
    total = f"; the whole script {d['total_seconds'] / 60:.1f} min" if "total_seconds" in d else ""
    concept = "" if d["concept"] == "wide" else f" --concept {d['concept']}"
    return (
        _table(["prompt", "mean height (px of 28)", "width / height", "prompt accuracy"], rows)
        + f"\n{d['images']} training digits, {d['num_vectors']} vector, {d['steps']} steps at lr {d['lr']:g}; "
        f"{d['plain']['images']} images per row. Training took {d['seconds'] / 60:.1f} min{total}.\n\n"
        + provenance_line(path, d, f"python scripts/demo_textual_inversion.py{concept}")
    )


def demo_dreambooth() -> str:
    path = "data/demos/dreambooth.json"
    d = _load(path)
    rows = []
    for key, label in (
        ("base", "base model"),
        ("no_prior", "DreamBooth"),
        ("prior", "DreamBooth + prior preservation"),
    ):
        r = d[key]
        time = f"{r['seconds'] / 60:.1f} min" if "seconds" in r else "—"
        rows.append([label, f"{r['subject_fidelity']:.3f}", f"{r['class_drift_to_subject']:.3f}",
                     f"{r['class_accuracy']:.2f}", f"{r['class_diversity']:.2f}", time])  # fmt: skip
    total = f" The whole script took {d['total_seconds'] / 60:.1f} min." if "total_seconds" in d else ""
    return (
        _table(
            [
                "model",
                "subject fidelity ↑",
                "class drift to subject ↓",
                "class accuracy",
                "class diversity",
                "training time",
            ],
            rows,
        )  # fmt: skip
        + f"\n{total}\n\n"
        + provenance_line(path, d, "python scripts/demo_dreambooth.py")
    )


def _rows_ms(path: str, command: str, ms_key: str, scale: float) -> str:
    d = _load(path)
    rows = [
        [r["path"], f"{r[ms_key] * scale:.1f}", r["unet_evaluations"], f"{r['prompt_accuracy']:.3f}",
         f"{r['fid_ratio']:.2f}"]
        for r in d["rows"]
    ]  # fmt: skip
    return (
        _table(["path", "ms / image", "UNet evaluations", "prompt accuracy", "FID / floor"], rows)
        + "\n"
        + provenance_line(path, d, command)
    )


def distilled() -> str:
    return _rows_ms(
        "eval/distilled.json", "python scripts/eval_distilled.py --lcm runs/lcm/model", "ms_per_image", 1
    )


def bench_fast() -> str:
    return _rows_ms("data/bench_fast.json", "python scripts/bench_fast.py --sd15", "seconds_per_image", 1000)


def bench_fast_sd15() -> str:
    path = "data/bench_fast.json"
    d = _load(path)
    base = d["sd15"][0]["seconds_per_image"]
    rows = [[r["path"] + (f" {r['note']}" if r.get("note") else ""), f"{r['seconds_per_image']:.1f}",
             f"{base / r['seconds_per_image']:.1f}×"] for r in d["sd15"] if "per CFG step" not in r["path"]]  # fmt: skip
    return (
        _table(["path", "s / image", "speed vs diffusers' default"], rows)
        + "\n"
        + provenance_line(path, d, "python scripts/bench_fast.py --sd15")
    )


def bench_speedups() -> str:
    path = "data/bench_speedups.json"
    d = _load(path)
    sd = {r["variant"]: r for r in d["sd15"]}
    rows = []
    for r in d["digits"]:
        s = sd.get(r["variant"], {})
        dev = s.get("relative_deviation")
        rows.append([r["variant"], f"{r['ms_per_image']:.1f}", f"{r['speed_vs_fp32']:.2f}×", f"{r['prompt_accuracy']:.3f}",
                     f"{r['fid_ratio']:.2f}", f"{s['seconds_per_cfg_step']:.2f}" if s else "—",
                     f"{s['speed_vs_fp32']:.2f}×" if s else "—", f"{dev * 100:.1f} %" if dev else "—"])  # fmt: skip
    return (
        _table(
            [
                "speed-up",
                "digits ms / image",
                "speed",
                "accuracy",
                "FID / floor",
                "SD 1.5 s / CFG step",
                "speed",
                "deviation",
            ],
            rows,
        )  # fmt: skip
        + "\n"
        + provenance_line(path, d, "python scripts/bench_speedups.py --sd15")
    )


def bench_memory() -> str:
    path = "data/bench_memory.json"
    d = _load(path)
    rows = [[r["path"], f"{r['peak_rss_gb']:.2f} GB"] for r in d["rows"]]
    return (
        _table(["path", "peak RSS"], rows)
        + "\n"
        + provenance_line(path, d, "python scripts/bench_memory.py --file runs/bench/random-sd15.safetensors")
    )


def bench_sdxl() -> str:
    path = "data/bench_sdxl.json"
    d = _load(path)
    rows = [[r["row"], f"{r['seconds']:.1f}"] for r in d["timings"]]
    memory = [[r["path"], f"{r['peak_rss_gb']:.1f} GB", f"{r['seconds']:.0f} s"] for r in d["memory"]]
    return (
        _table(["SDXL, random weights", "s"], rows)
        + "\n"
        + _table(
            ["load the file and make one 512×512 image (fresh process each)", "peak RSS", "wall"], memory
        )
        + "\n"
        + provenance_line(path, d, "python scripts/bench_sdxl.py --memory")
    )


def bench_compile() -> str:
    path = "data/bench_compile.json"
    d = _load(path)
    rows = [[r["model"], r["dtype"], f"{r['eager_s']:.2f}", f"{r['compiled_s']:.2f}", f"{r['speedup']:.2f}×",
             f"{r['first_compiled_call_s']:.0f} s", f"{r['max_pixel_difference']}/255"] for r in d["rows"]]  # fmt: skip
    return (
        _table(
            ["workload", "dtype", "eager s", "compiled s", "speed-up", "first call", "max pixel difference"],
            rows,
        )
        + "\n"
        + provenance_line(path, d, d.get("command", "python scripts/bench_compile.py --sd15"))
    )


def bench_vae_tiling() -> str:
    path = "data/bench_vae_tiling.json"
    d = _load(path)
    rows = []
    for r in d["rows"]:
        diff = f"{r['max_levels']} / {r['mean_levels']:.2f} levels of 255" if "max_levels" in r else ""
        rows.append([f"{r['size']}²", r["mode"], f"{r['peak_gb']:.2f} GB", f"{r['decode_s']:.1f} s", diff])
    return (
        _table(["size", "decode", "peak RSS", "time", "tiled vs whole: max / mean difference"], rows)
        + "\n"
        + provenance_line(path, d, "python scripts/bench_vae_tiling.py")
    )


def train_base_quick() -> str:
    path = "data/train_base_quick.json"
    d = _load(path)
    names = {
        "captioner": "captioner",
        "vae": "VAE",
        "text": "text encoder, contrastive",
        "unet": "UNet + text encoder",
    }
    rows = [
        [f"{names.get(r['stage'], r['stage'])} ({r['work']})", f"{r['seconds'] / 60:.1f} min"]
        for r in d["stages"]
    ]
    rows.append(["**total**", f"**{d['total_seconds'] / 60:.1f} min**"])
    return (
        _table(["stage", "time"], rows) + "\n" + provenance_line(path, d, "sdlab train-base --preset quick")
    )


def fast_finalists() -> str:
    path = "eval/fast.json"
    d = _load(path)
    finals = [r for r in d["rows"] if r.get("stage") == 2]
    names = [k.removeprefix("fid_ratio_") for k in finals[0] if k.startswith("fid_ratio_")]
    rows = []
    for r in finals:
        lo, hi = r["guidance_interval"]
        where = (
            "every step" if hi is None and not lo else f"σ in ({lo:g}, {'∞' if hi is None else f'{hi:g}'}]"
        )
        rows.append([
            f"{r['scheduler']} {r['num_inference_steps']}, CFG {r['guidance_scale']:g} at {where}",
            r["unet_evaluations"], r["seeds"],
            *(f"{r[f'prompt_accuracy_{n}']:.3f} / {r[f'fid_ratio_{n}']:.2f}×" for n in names),
            _pct(r["thick_change"]), "✓" if r["meets"] else "✗",
        ])  # fmt: skip
    header = ["setting", "UNet evals", "seeds", *(f"{n}: accuracy / FID÷floor" for n in names), '"thick"',
              "meets every target"]  # fmt: skip
    return _table(header, rows) + "\n" + provenance_line(path, d, "sdlab eval --sweep fast --deep-cache 1")


def guide_sweep() -> str:
    path = "eval/guide.json"
    d = _load(path)
    names = [k.removeprefix("prompt_accuracy_") for k in d["rows"][0] if k.startswith("prompt_accuracy_")]
    rows = [[f"{r['guide_scale']:g}", *(f"{r[f'prompt_accuracy_{n}']:.3f}" for n in names),
             *(f"{r[f'fid_ratio_{n}']:.2f}×" for n in names)] for r in d["rows"]]  # fmt: skip
    header = ["`--guide-scale`", *(f"drawn as the wanted digit ({n}{', the guide' if n == 'cnn' else ''})"
                                   for n in names), *(f"FID ÷ floor ({n})" for n in names)]  # fmt: skip
    return _table(header, rows) + "\n" + provenance_line(path, d, "sdlab eval --sweep guide")


TABLES: dict[str, Callable[[], str]] = {
    "train-base-quick": train_base_quick,
    "guide": guide_sweep,
    "eval": eval_headline,
    "judges": eval_judges,
    "fast-finalists": fast_finalists,
    "demo-finetune": demo_finetune,
    "demo-finetune-italic": lambda: demo_finetune("finetune-italic"),
    "demo-textual-inversion": demo_textual_inversion,
    "demo-textual-inversion-tiny": lambda: demo_textual_inversion("textual_inversion-tiny"),
    "demo-dreambooth": demo_dreambooth,
    "distilled": distilled,
    "bench-fast": bench_fast,
    "bench-fast-sd15": bench_fast_sd15,
    "bench-speedups": bench_speedups,
    "bench-memory": bench_memory,
    "bench-sdxl": bench_sdxl,
    "bench-compile": bench_compile,
    "bench-vae-tiling": bench_vae_tiling,
}
