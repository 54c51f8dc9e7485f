"""Side by side, in one run: sdlab's fast path against diffusers on the digits model, time and quality.

Rows, each generating the same prompts ("a handwritten digit D", D = 0..9, `--per-digit` images each,
seeds 0..N-1) on this machine in this process:

- diffusers, default settings: `StableDiffusionPipeline.from_pretrained(digits)` with its own defaults
  (50 steps, CFG 7.5, the folder's scheduler), as a newcomer would call it;
- diffusers at sdlab's settings: the same scheduler, steps and CFG as sdlab's defaults (diffusers has
  no guidance interval, so it guides every step);
- sdlab at the model's defaults (`sdlab.json`: scheduler, steps, CFG, guidance interval).

Each row reports seconds per image (wall time of the whole batch / images; batches of 100), UNet
evaluations per image, prompt accuracy and classifier-FID / floor from the evaluation classifier (the
same numbers `sdlab eval` gives), and its speed relative to diffusers' default.

sdlab's row runs twice: in float32, and at `--dtype auto` (bfloat16 on CPUs with AVX512-BF16 or AMX).
`--sd15` adds an SD 1.5-architecture model with random weights (sdlab's SD 1.5 configs), saved as a
single file with sdlab's exporter and loaded back by the single-file loader: seconds per 512x512 image
for diffusers' default (PNDM, 50 steps, CFG 7.5), sdlab at 20 DPM++ 2M steps with CFG, and sdlab's
few-step path (an LCM-shaped UNet, 4 steps, no CFG pass, a TAESD-shaped decoder), in float32 and
bfloat16, then with the measured CPU speed-ups on top (2 steps, deep cache; timed warm, after an
untimed first call). The long runs (50 and 20 steps) are timed over 2 steps and extrapolated, as
printed; the few-step rows are timed whole. Random weights: the times are real, the images are noise.

    python scripts/bench_fast.py                 # 1,000 images per row: about 6 minutes on 2 CPU cores
    python scripts/bench_fast.py --per-digit 20  # a quick look
    python scripts/bench_fast.py --per-digit 20 --sd15
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from sdlab.evaluation.provenance import write_measurement

warnings.filterwarnings("ignore")


def diffusers_rows(folder: Path, per_digit: int, settings: dict, judge) -> list[dict]:
    from diffusers import StableDiffusionPipeline

    from sdlab.digits.data import to_gray
    from sdlab.sampling.schedulers import make_scheduler

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    default_scheduler = pipe.scheduler
    rows = []
    for label, kwargs, scheduler in (
        ("diffusers, default settings (50 steps, CFG 7.5)", {}, default_scheduler),
        (
            "diffusers at sdlab's settings (CFG at every step)",
            dict(
                num_inference_steps=settings["num_inference_steps"], guidance_scale=settings["guidance_scale"]
            ),
            make_scheduler(settings["scheduler"], dict(pipe.scheduler.config)),
        ),
    ):
        pipe.scheduler = scheduler
        steps = kwargs.get("num_inference_steps", 50)
        scale = kwargs.get("guidance_scale", 7.5)

        def run(prompts, seeds, pipe=pipe, kwargs=kwargs):
            generators = [torch.Generator().manual_seed(s) for s in seeds]
            images = pipe(prompts, generator=generators, output_type="pt", **kwargs).images
            return to_gray(images).numpy()

        passes = (2 if scale > 1 else 1) * (steps + (1 if type(scheduler).__name__ == "PNDMScheduler" else 0))
        rows.append(measure(label, run, per_digit, judge, passes))
    return rows


def sdlab_row(per_digit: int, judge, dtype: str = "float32") -> tuple[dict, dict]:
    import sdlab
    from sdlab.digits.data import to_gray

    pipe = sdlab.load_pipeline(dtype=dtype)
    settings = pipe.recommended.to_json()
    evaluations = []

    def run(prompts, seeds):
        result = pipe.generate(prompts, seed=seeds)
        evaluations.append(result.settings["unet_evaluations"])
        settings.setdefault("scheduler", result.settings["scheduler"])
        return to_gray(result.pixels).numpy()

    label = "sdlab at the model's defaults, " + (
        f"--dtype auto ({str(pipe.dtype).removeprefix('torch.')} here)" if dtype == "auto" else dtype
    )
    row = measure(label, run, per_digit, judge, None)
    row["unet_evaluations"] = evaluations[0]
    return row, {**settings, "scheduler": settings.get("scheduler")}


def measure(label: str, run, per_digit: int, judge, passes: int | None) -> dict:
    from sdlab.evaluation.metrics import prompt_accuracy

    prompts = [f"a handwritten digit {d}" for d in range(10) for _ in range(per_digit)]
    wanted = np.repeat(np.arange(10), per_digit)
    grays, start = [], time.perf_counter()
    for first in range(0, len(prompts), 100):
        chunk = prompts[first : first + 100]
        grays.append(run(chunk, list(range(first, first + len(chunk)))))
    seconds = time.perf_counter() - start
    gray = np.concatenate(grays)
    return {
        "path": label,
        "images": len(gray),
        "seconds_per_image": seconds / len(gray),
        "unet_evaluations": passes,
        "prompt_accuracy": prompt_accuracy(judge.predict(gray), wanted),
        "fid_ratio": judge.fid(gray) / judge.floor(len(gray)),
    }


def sd15_rows(folder: Path) -> list[dict]:
    """Seconds per 512x512 image on an SD 1.5-architecture model with random weights."""
    from diffusers import AutoencoderKL, AutoencoderTiny, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdlab.loading import load_pipeline
    from sdlab.loading.export import save_single_file
    from sdlab.loading.single_file import config_dir
    from sdlab.loading.tokenizer import clip_tokenizer
    from sdlab.pipeline import Pipeline
    from sdlab.sampling.schedulers import make_scheduler

    configs = config_dir("sd15")
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder"))
    scheduler = json.loads((configs / "scheduler" / "scheduler_config.json").read_text())
    random_sd = Pipeline(unet, vae, text, clip_tokenizer(), scheduler, name="random-sd15")
    file = save_single_file(random_sd, folder / "random-sd15.safetensors", dtype=torch.float16)
    del random_sd, unet, vae, text
    pipe = load_pipeline(file, device="cpu", dtype="float32")
    prompt, rows = "a photo of a cat", []

    def timed(label: str, run, steps_run: int, steps_meant: int, fixed: float = 0.0, note: str = "") -> None:
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
        if steps_meant != steps_run:  # (seconds - decode) per step, times the steps meant, plus decode
            seconds = (seconds - fixed) / steps_run * steps_meant + fixed
        rows.append({"path": label, "seconds_per_image": seconds, "note": note})
        print(f"  {label}: {seconds:.1f} s {note}", flush=True)

    # the decoder's cost, timed once, so the long runs can be extrapolated from 2 steps
    latents = torch.randn(1, 4, 64, 64)
    start = time.perf_counter()
    with torch.no_grad():
        pipe.vae.decode(latents / pipe.vae.config.scaling_factor)
    decode = time.perf_counter() - start
    ref = StableDiffusionPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=make_scheduler("pndm", pipe.scheduler_config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    ref.set_progress_bar_config(disable=True)
    timed("diffusers, default (PNDM, 50 steps, CFG 7.5)", lambda: ref(prompt, num_inference_steps=2), 3, 51, decode,
          "(timed over 2 steps: PNDM runs steps + 1)")  # fmt: skip
    timed("sdlab, DPM++ 2M, 20 steps, CFG 7.5", lambda: pipe.generate(prompt, num_inference_steps=2,
          scheduler="dpmpp_2m", seed=0), 2, 20, decode, "(timed over 2 steps)")  # fmt: skip
    rows.append({"path": "sdlab, per CFG step (fp32)", "seconds_per_image": (rows[-1]["seconds_per_image"] - decode) / 20,
                 "note": "(from the 20-step row)"})  # fmt: skip
    # the few-step path: an LCM-shaped UNet (guidance as an embedding: one pass per step) and TAESD
    torch.manual_seed(0)
    config = {**dict(pipe.unet.config), "time_cond_proj_dim": 256}
    lcm_unet = UNet2DConditionModel.from_config(config)
    lcm_unet.load_state_dict(pipe.unet.state_dict(), strict=False)
    taesd = AutoencoderTiny()
    for dtype in (torch.float32, torch.bfloat16):
        fast = Pipeline(lcm_unet.to(dtype), pipe.vae.to(dtype), pipe.text_encoder.to(dtype), pipe.tokenizer,
                        pipe.scheduler_config)  # fmt: skip
        decoder = taesd.to(dtype)
        name = str(dtype).removeprefix("torch.")
        timed(f"sdlab, LCM 4 steps + full VAE, {name}", lambda fast=fast: fast.generate(
              prompt, num_inference_steps=4, scheduler="lcm", guidance_scale=1.5, seed=0), 4, 4)  # fmt: skip
        timed(f"sdlab, LCM 4 steps + TAESD, {name}", lambda fast=fast, decoder=decoder: fast.generate(
              prompt, num_inference_steps=4, scheduler="lcm", guidance_scale=1.5, seed=0, vae_decoder=decoder), 4, 4)  # fmt: skip
    # the measured CPU speed-ups on top, warm (a first call untimed): fewer steps, deep cache
    for steps, cache in ((4, 1), (4, 3), (2, 1), (2, 2)):

        def few(steps=steps, cache=cache):
            return fast.generate(prompt, num_inference_steps=steps, scheduler="lcm", guidance_scale=1.5, seed=0,
                                 vae_decoder=decoder, deep_cache=cache)  # fmt: skip

        few()
        label = f"sdlab, LCM {steps} steps + TAESD, bfloat16" + (f", deep cache {cache}" if cache > 1 else "")
        timed(label + " (warm)", few, steps, steps)
    sdcpp_rows(file, prompt, rows, decode)
    return rows


def sdcpp_rows(file: Path, prompt: str, rows: list[dict], decode: float) -> None:
    """stable-diffusion.cpp on the same single file, through the `cyllama` wheel (if installed): seconds
    per CFG step at 512x512, from a 1-step and a 3-step run (the difference is two steps)."""
    try:
        from cyllama.sd import text_to_image
    except ImportError:
        print(
            "  stable-diffusion.cpp: skipped (pip install cyllama; stable-diffusion-cpp-python has no wheel here)"
        )
        return
    times = {}
    for steps in (1, 3):
        start = time.perf_counter()
        text_to_image(model_path=str(file), prompt=prompt, width=512, height=512, seed=0, sample_steps=steps,
                      cfg_scale=7.5, n_threads=torch.get_num_threads())  # fmt: skip
        times[steps] = time.perf_counter() - start
    per_step = (times[3] - times[1]) / 2
    rows.append({"path": "stable-diffusion.cpp (cyllama), f16 file, per CFG step", "seconds_per_image": per_step,
                 "note": f"(3-step run {times[3]:.1f} s, load and decode included)"})  # fmt: skip
    print(
        f"  stable-diffusion.cpp per CFG step: {per_step:.1f} s (1 step: {times[1]:.1f} s, 3 steps: {times[3]:.1f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-digit", type=int, default=100)
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument(
        "--sd15", action="store_true", help="also time an SD 1.5-architecture model at 512x512"
    )
    parser.add_argument("--work", default="runs/bench", help="where --sd15 writes its random single file")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    from sdlab.evaluation.digits import Judge
    from sdlab.loading import DEFAULT_MODEL

    judge = Judge.load()
    ours, settings = sdlab_row(args.per_digit, judge)
    rows = [*diffusers_rows(DEFAULT_MODEL, args.per_digit, settings, judge), ours]
    # --dtype auto: bfloat16 where the CPU has native bf16 (AVX512-BF16, AMX), else float32
    rows.append(sdlab_row(args.per_digit, judge, "auto")[0])
    base = rows[0]["seconds_per_image"]
    print(f"digits model, {torch.get_num_threads()} threads, sdlab's defaults: {json.dumps(settings)}\n")
    print(
        "| path | s / image | speed vs diffusers' default | UNet evals / image | prompt accuracy | FID / floor |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['path']} | {r['seconds_per_image'] * 1000:.1f} ms | {base / r['seconds_per_image']:.1f}x | "
              f"{r['unet_evaluations']} | {r['prompt_accuracy']:.3f} | {r['fid_ratio']:.2f} |")  # fmt: skip
    report = {"settings": settings, "rows": rows}
    if args.sd15:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        print("\nSD 1.5 architecture, random weights, 512x512, one image:")
        report["sd15"] = sd15_rows(Path(args.work))
        base = report["sd15"][0]["seconds_per_image"]
        print("\n| path | s / image | speed vs diffusers' default |\n| --- | --- | --- |")
        for r in report["sd15"]:
            ratio = "—" if "per CFG step" in r["path"] else f"{base / r['seconds_per_image']:.1f}x"
            print(f"| {r['path']} {r['note']} | {r['seconds_per_image']:.1f} s | {ratio} |")
    if args.json:
        write_measurement(args.json, report)


if __name__ == "__main__":
    main()
