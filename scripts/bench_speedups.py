"""Cheaper UNet steps on a CPU, each measured for speed and quality in one run (issue 13, item 3).

Each variant is applied to a freshly loaded model and compared with float32 in the same process:

- `bfloat16`: weights and activations in bfloat16 (fast on CPUs with AVX512-BF16 or AMX);
- `channels_last`: the UNet's 4-D tensors in NHWC memory order;
- `int8`: dynamic int8 quantization of the UNet's Linear layers (`torch.ao.quantization.quantize_dynamic`);
- `compile`: `torch.compile` (inductor) with inductor's `freezing` (weights folded as constants);
- `deep cache N`: sdlab's DeepCache (`sdlab.sampling.deep_cache`): the UNet runs whole every N steps;
- `tomesd 0.5`: token merging (Bolya & Hoffman 2023) at ratio 0.5, if the `tomesd` package is installed.

The digits model (its defaults from `sdlab.json`): milliseconds per image over `--per-digit` x 10 images
in batches of 100 (after a warm-up batch), prompt accuracy and classifier-FID / floor, as `sdlab eval`.
`--sd15`: an SD 1.5-architecture UNet with random weights at 512x512 (64x64 latents), one CFG step
(batch 2): median seconds of 3 calls after a warm-up, and the output's relative deviation from float32,
||out - out_fp32|| / ||out_fp32||. For deep cache, the mean cost per step over its interval
((full + (N - 1) x cached) / N) and the deviation of a cached step from a full one at the next step.

    python scripts/bench_speedups.py                  # digits, 1,000 images per variant: ~5 minutes
    python scripts/bench_speedups.py --sd15           # and SD 1.5 at 512x512: ~6 minutes more
    python scripts/bench_speedups.py --per-digit 20   # a quick look
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from sdlab.evaluation.provenance import write_measurement

warnings.filterwarnings("ignore")


def channels_last(unet: torch.nn.Module) -> torch.nn.Module:
    return unet.to(memory_format=torch.channels_last)


def int8(unet: torch.nn.Module) -> torch.nn.Module:
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(unet, {torch.nn.Linear}, dtype=torch.qint8)


def compiled(unet: torch.nn.Module) -> torch.nn.Module:
    import torch._inductor.config as inductor

    inductor.freezing = True
    unet.forward = torch.compile(unet.forward, dynamic=False)
    return unet


def tome(unet: torch.nn.Module) -> torch.nn.Module:
    import tomesd

    tomesd.apply_patch(unet, ratio=0.5)
    return unet


def has_tomesd() -> bool:
    try:
        import tomesd  # noqa: F401
    except ImportError:
        return False
    return True


# name -> (dtype, UNet transform, deep cache interval: 1 is off, whatever the model recommends)
VARIANTS: dict[str, tuple[str, Callable | None, int]] = {
    "float32 (baseline)": ("float32", None, 1),
    "bfloat16": ("bfloat16", None, 1),
    "channels_last": ("float32", channels_last, 1),
    "int8 dynamic (Linear)": ("float32", int8, 1),
    "torch.compile (inductor, freezing)": ("float32", compiled, 1),
    "deep cache 2": ("float32", None, 2),
    "deep cache 3": ("float32", None, 3),
    "tomesd 0.5": ("float32", tome, 1),
}


def digits_rows(per_digit: int) -> list[dict]:
    import sdlab
    from sdlab.digits.data import to_gray
    from sdlab.evaluation.digits import Judge
    from sdlab.evaluation.metrics import prompt_accuracy

    judge = Judge.load()
    prompts = [f"a handwritten digit {d}" for d in range(10) for _ in range(per_digit)]
    wanted = np.repeat(np.arange(10), per_digit)
    rows = []
    for name, (dtype, transform, deep_cache) in VARIANTS.items():
        if name.startswith("tomesd") and not has_tomesd():
            print(f"  {name}: skipped (pip install tomesd)")
            continue
        pipe = sdlab.load_pipeline(dtype=dtype)
        start = time.perf_counter()
        if transform is not None:
            pipe.unet = transform(pipe.unet)
        with torch.no_grad():
            pipe.generate(
                prompts[:100], seed=list(range(100)), deep_cache=deep_cache
            )  # warm-up (and compile)
        setup = time.perf_counter() - start
        grays, start = [], time.perf_counter()
        for first in range(0, len(prompts), 100):
            chunk = prompts[first : first + 100]
            with torch.no_grad():
                result = pipe.generate(
                    chunk, seed=list(range(first, first + len(chunk))), deep_cache=deep_cache
                )
            grays.append(to_gray(result.pixels).numpy())
        ms = (time.perf_counter() - start) / len(prompts) * 1000
        gray = np.concatenate(grays)
        row = {
            "variant": name,
            "ms_per_image": ms,
            "prompt_accuracy": prompt_accuracy(judge.predict(gray), wanted),
            "fid_ratio": judge.fid(gray) / judge.floor(len(gray)),
            "warm_up_s": setup,
        }
        row["speed_vs_fp32"] = rows[0]["ms_per_image"] / ms if rows else 1.0
        rows.append(row)
        print(
            f"  {name}: {ms:.1f} ms/image ({row['speed_vs_fp32']:.2f}x), accuracy {row['prompt_accuracy']:.3f}, "
            f"FID/floor {row['fid_ratio']:.2f}, warm-up {setup:.1f} s",
            flush=True,
        )
    return rows


def sd15_rows() -> list[dict]:
    from diffusers import UNet2DConditionModel

    from sdlab.loading.single_file import config_dir
    from sdlab.sampling.deep_cache import DeepCache

    torch.manual_seed(0)
    base = UNet2DConditionModel.from_config(
        UNet2DConditionModel.load_config(config_dir("sd15") / "unet")
    ).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 64, 64, generator=g)
    x_next = x + 0.05 * torch.randn(2, 4, 64, 64, generator=g)  # the next step's input, for deep cache
    text = torch.randn(2, 77, 768, generator=g)
    t, t_next = torch.tensor(500), torch.tensor(450)

    def median_seconds(call: Callable[[], torch.Tensor], repeats: int = 3) -> tuple[float, torch.Tensor]:
        with torch.no_grad():
            out = call()  # warm-up (and compile)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                out = call()
                times.append(time.perf_counter() - start)
        return statistics.median(times), out.float()

    rows: list[dict] = []
    ref = None
    for name, (dtype, transform, deep_cache) in VARIANTS.items():
        if name.startswith("tomesd") and not has_tomesd():
            continue
        unet = copy.deepcopy(base).to(getattr(torch, dtype))
        start = time.perf_counter()
        if transform is not None:
            unet = transform(unet)
        xi, ti = x.to(unet.dtype), text.to(unet.dtype)
        if deep_cache == 1:
            seconds, out = median_seconds(
                lambda unet=unet, xi=xi, ti=ti: unet(xi, t, encoder_hidden_states=ti).sample
            )
            deviation = float((out - ref).norm() / ref.norm()) if ref is not None else 0.0
            note = (
                f"first call {time.perf_counter() - start - seconds * 3:.0f} s"
                if transform is compiled
                else ""
            )
        else:
            cache = DeepCache(unet, deep_cache)
            full, _ = median_seconds(lambda cache=cache, xi=xi, ti=ti: cache(0, xi, t, ti))
            with torch.no_grad():
                cache(0, xi, t, ti)  # keep the features of this step
                exact = unet(x_next, t_next, encoder_hidden_states=ti).sample.float()
            cached, out = median_seconds(lambda cache=cache, ti=ti: cache(1, x_next, t_next, ti))
            seconds = (full + (deep_cache - 1) * cached) / deep_cache
            deviation = float((out - exact).norm() / exact.norm())
            note = f"full step {full:.2f} s, cached step {cached:.2f} s; deviation: a cached step against a full one"
        if ref is None:
            ref = out
        row = {
            "variant": name,
            "seconds_per_cfg_step": seconds,
            "relative_deviation": deviation,
            "note": note,
        }
        row["speed_vs_fp32"] = rows[0]["seconds_per_cfg_step"] / seconds if rows else 1.0
        rows.append(row)
        print(
            f"  {name}: {seconds:.2f} s per CFG step ({row['speed_vs_fp32']:.2f}x), deviation {deviation:.4f} {note}",
            flush=True,
        )
        del unet
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-digit", type=int, default=100, help="digits images per digit per variant")
    parser.add_argument(
        "--sd15", action="store_true", help="also time an SD 1.5-architecture UNet at 512x512"
    )
    parser.add_argument(
        "--output", default="runs/bench/bench_speedups.json", help="where the rows are written"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    from sdlab.loading import cpu_runs_bfloat16

    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_bf16": cpu_runs_bfloat16()}
    print(f"digits model, {args.per_digit * 10} images per variant:")
    report["digits"] = digits_rows(args.per_digit)
    if args.sd15:
        print("SD 1.5 UNet, random weights, 512x512, one CFG step (batch 2):")
        report["sd15"] = sd15_rows()
    write_measurement(args.output, report)
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [
        "| variant | digits ms/image | speed | accuracy | FID / floor |"
        + (" SD 1.5 s/CFG step | speed | deviation |" if "sd15" in report else ""),
        "| --- | --- | --- | --- | --- |" + (" --- | --- | --- |" if "sd15" in report else ""),
    ]
    sd = {r["variant"]: r for r in report.get("sd15", [])}
    for r in report["digits"]:
        line = (
            f"| {r['variant']} | {r['ms_per_image']:.1f} | {r['speed_vs_fp32']:.2f}x | "
            f"{r['prompt_accuracy']:.3f} | {r['fid_ratio']:.2f} |"
        )
        if "sd15" in report:
            s = sd.get(r["variant"])
            line += (
                f" {s['seconds_per_cfg_step']:.2f} | {s['speed_vs_fp32']:.2f}x | {s['relative_deviation']:.4f} |"
                if s
                else " | | |"
            )
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
