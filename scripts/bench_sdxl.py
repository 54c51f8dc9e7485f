"""SDXL on this machine: sdlab against diffusers side by side in one process, and peak memory per path.

The model has SDXL 1.0's architecture (sdlab's shipped `sdxl` configs: 2.57 B UNet, CLIP ViT-L and
OpenCLIP bigG, the 1024 px VAE) with seeded random weights: the times are real, the images are noise.

Timings (one process, the same components for both libraries; each row run twice and the second,
warm run reported, as both libraries pay a first-call cost):
- a Turbo-style 512x512 image: Euler a, trailing timesteps, guidance 0 (one UNet call a step), 1 and
  4 steps, decoded by the full VAE or by a TAESDXL-shaped `AutoencoderTiny`; diffusers'
  `StableDiffusionXLPipeline` on the same components and scheduler, at float32 and bfloat16;
- one 1024x1024 step with CFG (a batch of two through the UNet): the 2-step run minus the 1-step run,
  both decoded by the tiny decoder (bfloat16 only: float32 would take minutes a step);
- bfloat16's deviation from float32: mean and max absolute difference of the 4-step images on [0, 1].
The bfloat16 rows run only on CPUs with native bfloat16 (AVX512-BF16 or AMX, `cpu_runs_bfloat16`):
elsewhere torch's bfloat16 convolutions take a reference path, hundreds of times slower than float32;
the 1024x1024 row then runs in float32.

Peak memory (`--memory`): the model is written once as a float16 single file (7 GB, sdlab's exporter);
each path then runs in a fresh process that loads it and makes one 512x512 Turbo-style image, and its
peak resident set size is reported: sdlab (bfloat16, cast as read), diffusers' `from_single_file` (with
sdlab's shipped config, bfloat16), stable-diffusion.cpp through the `cyllama` wheel (f16), if installed.

    python scripts/bench_sdxl.py            # timings: about 10 minutes on 2 CPU cores, 16 GB of RAM
    python scripts/bench_sdxl.py --memory   # and the peak-memory rows: about 10 minutes more
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch

SDLAB_CHILD = """
import resource, sys, torch
from sdlab.loading import load_pipeline
pipe = load_pipeline(sys.argv[1], device="cpu", dtype=sys.argv[2])
pipe.generate("a photo of a cat", num_inference_steps=1, guidance_scale=0.0, scheduler="euler_a",
              timestep_spacing="trailing", height=512, width=512, seed=0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

DIFFUSERS_CHILD = """
import resource, sys, torch
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline
from sdlab.loading.tokenizer import OPEN_CLIP_PAD_TOKEN, clip_tokenizer  # offline: no hub tokenizers
pipe = StableDiffusionXLPipeline.from_single_file(sys.argv[1], config=sys.argv[3], local_files_only=True,
                                                  torch_dtype=getattr(torch, sys.argv[2]), add_watermarker=False,
                                                  tokenizer=clip_tokenizer(),
                                                  tokenizer_2=clip_tokenizer(pad_token=OPEN_CLIP_PAD_TOKEN))
pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
pipe("a photo of a cat", num_inference_steps=1, guidance_scale=0.0, height=512, width=512,
     generator=torch.Generator().manual_seed(0))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

SDCPP_CHILD = """
import resource, sys, torch
from cyllama.sd import SampleMethod, Scheduler, text_to_image
text_to_image(model_path=sys.argv[1], prompt="a photo of a cat", width=512, height=512, seed=0, sample_steps=1,
              cfg_scale=1.0, sample_method=SampleMethod.EULER_A, scheduler=Scheduler.SGM_UNIFORM,
              n_threads=torch.get_num_threads())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

TURBO = dict(
    guidance_scale=0.0, scheduler="euler_a", timestep_spacing="trailing", seed=0, height=512, width=512
)


def random_sdxl():
    """SDXL 1.0's architecture from sdlab's shipped configs, with seeded random weights, float32."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sdlab.loading.single_file import config_dir
    from sdlab.loading.tokenizer import OPEN_CLIP_PAD_TOKEN, clip_tokenizer
    from sdlab.pipeline import Pipeline

    folder = config_dir("sdxl")
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.float().eval()  # the text encoders' configs say float16
    return Pipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(),
        scheduler_config=json.loads((folder / "scheduler" / "scheduler_config.json").read_text()), name="random-sdxl",
        text_encoder_2=text_encoder_2, tokenizer_2=clip_tokenizer(pad_token=OPEN_CLIP_PAD_TOKEN),
    )  # fmt: skip


def timed(fn, runs: int = 2) -> tuple[float, object]:
    """(seconds of the last of `runs` calls, its result)."""
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    return seconds, out


def diffusers_pipeline(pipe):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline

    scheduler = EulerAncestralDiscreteScheduler.from_config(
        pipe.scheduler_config, timestep_spacing="trailing"
    )
    ref = StableDiffusionXLPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2, tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2, unet=pipe.unet, scheduler=scheduler, add_watermarker=False,
    )  # fmt: skip
    ref.set_progress_bar_config(disable=True)
    return ref


def timings(pipe, dtypes: list[torch.dtype]) -> tuple[list[dict], dict | None]:
    from diffusers import AutoencoderTiny

    prompt = "a photo of a cat"
    rows, images = [], {}
    for dtype in dtypes:
        pipe.to(dtype=dtype)
        tiny = AutoencoderTiny().to(dtype).eval()  # TAESDXL's architecture, random weights
        ref = diffusers_pipeline(pipe)
        name = str(dtype).removeprefix("torch.")
        cases = [
            ("sdlab, 1 step, full VAE", partial(pipe.generate, prompt, num_inference_steps=1, **TURBO)),
            ("diffusers, 1 step, full VAE", partial(ref, prompt, num_inference_steps=1, guidance_scale=0.0,
                                                    height=512, width=512, generator=torch.Generator())),
            ("sdlab, 4 steps, full VAE", partial(pipe.generate, prompt, num_inference_steps=4, **TURBO)),
            ("sdlab, 1 step, tiny decoder", partial(pipe.generate, prompt, num_inference_steps=1, vae_decoder=tiny,
                                                    **TURBO)),
            ("sdlab, 4 steps, tiny decoder", partial(pipe.generate, prompt, num_inference_steps=4, vae_decoder=tiny,
                                                     **TURBO)),
        ]  # fmt: skip
        for label, fn in cases:
            with torch.no_grad():
                seconds, out = timed(fn, runs=2)
            rows.append({"row": f"{label}, 512x512, {name}", "seconds": round(seconds, 2)})
            print(f"  {rows[-1]['row']}: {seconds:.1f} s", flush=True)
            if label == "sdlab, 4 steps, full VAE":
                images[name] = out.pixels
        if dtype == dtypes[-1]:  # one 1024x1024 step with CFG: 2 steps minus 1 step
            big = dict(
                guidance_scale=5.0, scheduler="euler", height=1024, width=1024, seed=0, vae_decoder=tiny
            )
            one, _ = timed(partial(pipe.generate, prompt, num_inference_steps=1, **big), runs=1)
            two, _ = timed(partial(pipe.generate, prompt, num_inference_steps=2, **big), runs=1)
            rows.append({"row": f"sdlab, one 1024x1024 step with CFG (2 UNet passes), {name}",
                         "seconds": round(two - one, 2)})  # fmt: skip
            print(
                f"  {rows[-1]['row']}: {two - one:.1f} s (1 step {one:.1f} s, 2 steps {two:.1f} s)",
                flush=True,
            )
    if len(images) < 2:
        return rows, None
    diff = (images["float32"] - images["bfloat16"]).abs()
    deviation = {"mean_abs": round(float(diff.mean()), 4), "max_abs": round(float(diff.max()), 4)}
    return rows, deviation


def peak(code: str, *args: str) -> tuple[float, float]:
    """(peak RSS in GB, seconds) of `code` run in a fresh Python process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1]) / 1e6, time.perf_counter() - start


def write_file(file: Path) -> None:
    """The random SDXL as a float16 single file, written in a child process (whose memory is then freed)."""
    code = (
        "import sys, torch; sys.path.insert(0, 'scripts'); from bench_sdxl import random_sdxl; "
        "from sdlab.loading.export import save_single_file; "
        "save_single_file(random_sdxl(), sys.argv[1], dtype=torch.float16)"
    )
    file.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code, str(file)], check=True)


def memory(file: Path, dtype: str) -> list[dict]:
    from sdlab.loading.single_file import config_dir

    rows = []
    for label, code, extra in (
        (f"sdlab, {dtype} (cast as read)", SDLAB_CHILD, [dtype]),
        (f"diffusers from_single_file, {dtype}", DIFFUSERS_CHILD, [dtype, str(config_dir("sdxl"))]),
        ("stable-diffusion.cpp (cyllama), f16", SDCPP_CHILD, []),
    ):
        try:
            gb, seconds = peak(code, str(file), *extra)
        except subprocess.CalledProcessError as err:
            print(f"  {label}: failed ({err.stderr.strip().splitlines()[-1] if err.stderr.strip() else err})")
            continue
        rows.append({"path": label, "peak_rss_gb": round(gb, 2), "seconds": round(seconds, 1)})
        print(f"  {label}: peak {gb:.2f} GB in {seconds:.0f} s (load and one 512x512 step)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--memory", action="store_true", help="also the peak-memory rows (writes a 7 GB file)"
    )
    parser.add_argument(
        "--memory-only", action="store_true", help="only the peak-memory rows, added to --json"
    )
    parser.add_argument("--file", default="runs/bench/random-sdxl-f16.safetensors", help="the single file")
    parser.add_argument("--json", default="runs/bench/bench_sdxl.json", help="where the rows are written")
    args = parser.parse_args()
    from sdlab.evaluation.provenance import cpu_name, write_measurement
    from sdlab.loading import cpu_runs_bfloat16

    cpu, native = cpu_name(), cpu_runs_bfloat16()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, native bfloat16: {native}",
        flush=True,
    )
    out = Path(args.json)
    if args.memory_only:
        result = json.loads(out.read_text())
    else:
        pipe = random_sdxl()
        rows, deviation = timings(pipe, [torch.float32, torch.bfloat16] if native else [torch.float32])
        result = write_measurement(out, {"timings": rows, "bfloat16_vs_float32_4_steps": deviation})
    if args.memory or args.memory_only:
        file = Path(args.file)
        if not file.exists():
            write_file(file)
        result["memory"] = memory(file, "bfloat16" if native else "float32")
        result = write_measurement(out, {k: v for k, v in result.items() if k != "provenance"})
    print("\n| row | seconds |\n| --- | --- |")
    for r in result["timings"]:
        print(f"| {r['row']} | {r['seconds']:.1f} |")
    deviation = result.get("bfloat16_vs_float32_4_steps")
    if deviation:
        print(
            f"\nbfloat16 against float32 (4 steps, pixels in [0, 1]): mean {deviation['mean_abs']}, max {deviation['max_abs']}"
        )
    for r in result.get("memory", []):
        print(f"| {r['path']} | {r['peak_rss_gb']:.2f} GB | {r['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
