"""sdlab on a CUDA GPU, checked in one process, with a table at the end. On a GPU machine with sdlab
installed (`pip install -e .` and the CUDA build of torch):

    python scripts/check_cuda.py [--out cuda-check.json] [--old-src PATH] [--skip compile]

`--device cpu --quick` runs every part small on a CPU (a dry run of the script itself, not a measurement).

1. parity: an SD 1.5-architecture model (random weights, float16, 512x512, DPM++ 2M 20 steps, CFG
   7.5): sdlab's pixels against diffusers' `StableDiffusionPipeline` on the same modules, and both
   timed (median of 3 warm runs);
2. eval: the shipped digits model at its defaults (float16), judged as `sdlab eval` judges it;
3. replay: features whose images must come out bit for bit the same on a second run (gradient
   guidance included, whose backward pass needs deterministic kernels), and one `sdlab replay` in a
   fresh process;
4. training: `scripts/bench_train.py --device cuda` (the quick preset's stages, steps/s), and with
   `--old-src` the same for an older checkout's `src/` (before/after in one run);
5. compile: the SD 1.5 UNet eager against `Pipeline.compile()` (and with CUDA graphs): compile time,
   it/s and the largest pixel difference.
Each part that fails says so in its row; the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# the sizes of a real run, and of a --quick dry run
FULL = {"size": 512, "steps": 20, "per_digit": 100, "train_steps": "150"}
QUICK = {"size": 64, "steps": 2, "per_digit": 5, "train_steps": "12"}
S = dict(FULL)
DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(run, repeat: int = 3) -> float:
    """Median seconds of `repeat` warm calls (one untimed call first), the GPU synchronised around each."""
    run()
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_sd15():
    """An SD 1.5-architecture Pipeline with seeded random weights, on the device (float16 on a GPU)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdlab.loading.single_file import config_dir
    from sdlab.loading.tokenizer import clip_tokenizer
    from sdlab.pipeline import Pipeline

    configs = config_dir("sd15")
    torch.manual_seed(0)
    dtype = torch.float16 if DEVICE == "cuda" else torch.float32
    with torch.device(DEVICE):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder"))
    scheduler = json.loads((configs / "scheduler" / "scheduler_config.json").read_text())
    pipe = Pipeline(unet.to(dtype).eval(), vae.to(dtype).eval(), text.to(dtype).eval(), clip_tokenizer(),
                    scheduler, name="random-sd15")  # fmt: skip
    return pipe


def parity(report: dict) -> None:
    from diffusers import StableDiffusionPipeline

    from sdlab.sampling.schedulers import make_scheduler

    pipe = random_sd15()
    prompt, steps, size = "an astronaut riding a horse, oil painting", S["steps"], S["size"]
    ref = StableDiffusionPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=make_scheduler("dpmpp_2m", pipe.scheduler_config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    ref.set_progress_bar_config(disable=True)

    def theirs():
        g = [torch.Generator().manual_seed(0)]
        return ref(prompt, num_inference_steps=steps, guidance_scale=7.5, height=size, width=size, generator=g,
                   output_type="np").images[0]  # fmt: skip

    def ours():
        return pipe.generate(prompt, scheduler="dpmpp_2m", num_inference_steps=steps, guidance_scale=7.5,
                             height=size, width=size, seed=0).images[0]  # fmt: skip

    a, b = np.asarray(ours(), dtype=np.int16), (theirs() * 255).round().astype(np.int16)
    report["parity"] = {
        "max_pixel_difference": int(np.abs(a - b).max()),
        "finite": bool(np.isfinite(theirs()).all()),
        "sdlab_s": round(timed(ours), 3),
        "diffusers_s": round(timed(theirs), 3),
        "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else None,
    }
    report["parity"]["sdlab_it_s"] = round(steps / report["parity"]["sdlab_s"], 1)


def evaluation(report: dict) -> None:
    from sdlab.evaluation.digits import evaluate, load_judges
    from sdlab.loading import load_pipeline

    pipe = load_pipeline(device=DEVICE, dtype="auto")
    judges = load_judges()
    start = time.perf_counter()
    h = evaluate(pipe, judges, per_digit=S["per_digit"])
    report["eval"] = {
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "images": h["samples"],
        "prompt_accuracy": round(h["prompt_accuracy"], 3),
        "fid_over_floor": round(h["fid_ratio"], 2),  # the worse of the judges
        "worst_judge": h["worst_judge"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def replay(report: dict) -> None:
    from PIL import Image

    from sdlab.cli.main import main
    from sdlab.service import GenerationRequest, ModelRegistry, run_request

    registry = ModelRegistry(device=DEVICE)
    init = Image.new("RGB", (32, 32))
    mask = Image.new("L", (32, 32))
    mask.paste(255, (8, 8, 24, 24))
    cases = {
        "defaults": GenerationRequest("a handwritten digit 3", seed=1, num_images_per_prompt=4),
        "every scheduler setting of its own": GenerationRequest(
            "a handwritten digit 5", seed=2, scheduler="euler_a", num_inference_steps=10, guidance_scale=5.0
        ),
        "gradient guidance": GenerationRequest("", seed=3, guide_digit=7, num_images_per_prompt=2),
        "img2img": GenerationRequest("a handwritten digit 8", seed=4, init_image=init, strength=0.7),
        "inpainting": GenerationRequest("a handwritten digit 8", seed=5, init_image=init, mask_image=mask),
    }  # fmt: skip
    rows = {}
    for name, request in cases.items():
        a, b = (run_request(registry, request).images for _ in range(2))
        rows[name] = all(
            np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b, strict=True)
        )
    with tempfile.TemporaryDirectory() as tmp:  # a fresh process: the CLI's replay of a guided image
        out = Path(tmp) / "guided.png"
        main(["generate", "", "--guide-digit", "7", "--seed", "9", "--device", DEVICE, "-o", str(out)])
        done = subprocess.run([sys.executable, "-m", "sdlab.cli.main", "replay", str(out), "--device", DEVICE],
                              capture_output=True, text=True)  # fmt: skip
        rows["sdlab replay (guided, new process)"] = "identical pixels" in done.stdout
    report["replay"] = rows


def training(report: dict, old_src: str | None) -> None:
    runs = {}
    for label, src in (("now", None), ("before", old_src)):
        if label == "before" and not src:
            continue
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "bench_train.json"
            done = subprocess.run(
                [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--device", DEVICE, "--steps", S["train_steps"],
                 "--label", label, "--out", str(out)], env=env, capture_output=True, text=True,
            )  # fmt: skip
            if done.returncode:
                runs[label] = {"error": done.stdout[-500:] + done.stderr[-1500:]}
                continue
            runs[label] = json.loads(out.read_text())[-1]["stages"]
    report["training"] = runs


def compiled(report: dict) -> None:
    pipe = random_sd15()
    steps, size = S["steps"], S["size"]

    def run():
        return pipe.generate("a photo of a cat", scheduler="dpmpp_2m", num_inference_steps=steps,
                             guidance_scale=7.5, height=size, width=size, seed=0)  # fmt: skip

    eager_image = np.asarray(run().images[0], dtype=np.int16)
    rows = {"eager_it_s": round(steps / timed(run), 1)}
    for graphs in (False, True):
        name = "compiled+cudagraphs" if graphs else "compiled"
        if graphs and DEVICE != "cuda":
            continue
        pipe.compile(cuda_graphs=graphs)
        start = time.perf_counter()
        image = np.asarray(run().images[0], dtype=np.int16)  # the first call compiles
        rows[f"{name}_compile_s"] = round(time.perf_counter() - start, 1)
        rows[f"{name}_it_s"] = round(steps / timed(run), 1)
        rows[f"{name}_max_pixel_difference"] = int(np.abs(image - eager_image).max())
        report["compile"] = rows  # kept as far as it got
    report["compile"]["speedup"] = round(rows["compiled_it_s"] / rows["eager_it_s"], 2)


def table(report: dict) -> str:
    lines = [f"{'check':<46} result"]
    for section, value in report.items():
        if isinstance(value, dict):
            for key, item in value.items():
                lines.append(f"{section + ': ' + key:<46} {item}")
        else:
            lines.append(f"{section:<46} {value}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    parser.add_argument("--old-src", default=None, help="an older checkout's src/ to time training against")
    parser.add_argument("--skip", default="", help="parts to leave out, comma-separated (e.g. compile)")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run with --quick")
    parser.add_argument("--quick", action="store_true", help="every part small: a dry run of the script")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if args.quick:
        S.update(QUICK)
    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("check_cuda: no CUDA GPU here")
    import diffusers
    import scipy
    import transformers

    report: dict = {"environment": {
        "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "none (dry run)", "torch": torch.__version__, "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__, "transformers": transformers.__version__, "scipy": scipy.__version__,
    }}  # fmt: skip
    parts = {"parity": parity, "eval": evaluation, "replay": replay,
             "training": lambda r: training(r, args.old_src), "compile": compiled}  # fmt: skip
    for name, part in parts.items():
        if name in args.skip.split(","):
            continue
        start = time.perf_counter()
        try:
            part(report)
        except Exception as err:  # one part's failure is its row; the others still run
            traceback.print_exc()
            report[f"{name} failed"] = f"{type(err).__name__}: {err}"[:300]
        print(f"[{name}: {time.perf_counter() - start:.0f} s]", flush=True)
        if (
            DEVICE == "cuda"
        ):  # the part's models were dropped on return: the next one starts with the memory free
            torch.cuda.empty_cache()
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
