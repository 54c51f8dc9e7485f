"""Time sdlab's sampling loop against diffusers' StableDiffusionPipeline on the same model.

Both run the same components, scheduler, prompt, guidance and steps, interleaved in one process
(A, B, A, B, ...) so that machine noise hits both alike; the figure is the ratio of medians.
Peak memory is measured in a fresh child process per side (ru_maxrss, or CUDA's max allocated).

    python scripts/bench_generate.py                       # a mid-size random SD, 256x256, CPU
    python scripts/bench_generate.py --model PATH --size 512 --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def build(args) -> tuple:
    from diffusers import StableDiffusionPipeline

    from sdlab.loading import load_pipeline
    from sdlab.sampling.schedulers import make_scheduler

    if args.model:
        pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    else:
        pipe = random_model().to(torch.device(args.device))
    ref = StableDiffusionPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        scheduler=make_scheduler(args.scheduler, pipe.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    ref.set_progress_bar_config(disable=True)
    return pipe, ref


def random_model():
    """A seeded random SD with SD 1.x's layout at a CPU-friendly width (about 40 M UNet parameters)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdlab.loading.tokenizer import clip_tokenizer
    from sdlab.pipeline import Pipeline

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(64, 128, 256, 256),
        cross_attention_dim=256,
        attention_head_dim=8,
        layers_per_block=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64, 128, 128),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=256,
            intermediate_size=1024,
            num_attention_heads=4,
            num_hidden_layers=6,
            vocab_size=49408,
        )
    )
    config = {
        "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "steps_offset": 1, "skip_prk_steps": True, "set_alpha_to_one": False,
        "clip_sample": False, "prediction_type": "epsilon",
    }  # fmt: skip
    for m in (unet, vae, text_encoder):
        m.eval()
    return Pipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        scheduler_config=config,
        name="random",
    )


def run_once(side: str, pipe, ref, args) -> float:
    kwargs = dict(num_inference_steps=args.steps, guidance_scale=7.5, height=args.size, width=args.size)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    if side == "sdlab":
        pipe.generate(args.prompt, args.negative_prompt, scheduler=args.scheduler, seed=0, **kwargs)
    else:
        gen = [torch.Generator("cpu").manual_seed(0)]
        ref(args.prompt, negative_prompt=args.negative_prompt, generator=gen, **kwargs)
    sync()
    return time.perf_counter() - start


def peak_memory(side: str, args) -> float:
    """MiB: peak RSS of a child that builds the model and generates once with `side` (CUDA: max allocated)."""
    cmd = [sys.executable, __file__, "--child", side] + [a for a in sys.argv[1:] if a != "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="diffusers folder or .safetensors (default: a random mid-size SD)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--scheduler", default="euler")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--prompt", default="a photo of an astronaut riding a horse on mars")
    p.add_argument("--negative-prompt", default="blurry, low quality")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", choices=["sdlab", "diffusers"], help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_grad_enabled(True)

    pipe, ref = build(args)
    if args.child:
        run_once(args.child, pipe, ref, args)
        if args.device.startswith("cuda"):
            print(torch.cuda.max_memory_allocated() / 2**20)
        else:
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return

    run_once("sdlab", pipe, ref, args)  # warm-up both
    run_once("diffusers", pipe, ref, args)
    times: dict[str, list[float]] = {"sdlab": [], "diffusers": []}
    for i in range(args.rounds):
        order = ("sdlab", "diffusers") if i % 2 == 0 else ("diffusers", "sdlab")
        for side in order:
            times[side].append(run_once(side, pipe, ref, args))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "device": args.device,
        "model": args.model or "random mid-size SD",
        "scheduler": args.scheduler,
        "steps": args.steps,
        "size": args.size,
        "rounds": args.rounds,
        "median_s": med,
        "ratio_sdlab_over_diffusers": med["sdlab"] / med["diffusers"],
        "peak_mib": {side: peak_memory(side, args) for side in ("sdlab", "diffusers")},
        "torch_threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{result['model']}, {args.size}x{args.size}, {args.scheduler} x {args.steps} steps, CFG on, {args.device}"
    )
    print(
        f"median seconds per image   sdlab {med['sdlab']:.3f}   diffusers {med['diffusers']:.3f}   ({args.rounds} rounds, interleaved)"
    )
    print(f"ratio sdlab / diffusers    {result['ratio_sdlab_over_diffusers']:.3f}")
    mem = result["peak_mib"]
    print(f"peak memory (MiB)          sdlab {mem['sdlab']:.0f}   diffusers {mem['diffusers']:.0f}")


if __name__ == "__main__":
    main()
