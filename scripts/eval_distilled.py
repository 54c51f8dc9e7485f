"""The digits model's distilled parts against the teacher, at equal time, in one run (issue 13, item 2).

Rows, each 1,000 images (`--per-digit` x 10; the prompts and seeds of `sdlab eval`), timed in batches
of 100 in this process:

- the teacher at its defaults (`sdlab.json`: UniPC, 6 steps, CFG 3 at sigma <= 1.5: 9 UNet passes, deep
  cache every 2 steps), decoded by its VAE, then by its shipped tiny decoder (`--vae-decoder tiny`): the
  tiny decoder's cost; and without the deep cache;
- the LCM model (`--lcm DIR`, made by `sdlab distill`) at 1, 2 and 4 steps (one UNet pass each), at
  4 steps with the tiny decoder, and with a deep cache (2 steps, cache 2; 4 steps, cache 3);
- the teacher at the LCM's budget: 2 and 4 UNet passes (UniPC 2 / 4 steps without guidance, and
  UniPC 2 steps with CFG at every step), so the LCM is compared at equal time as well as at equal quality.

Each row: ms per image, UNet passes per image, prompt accuracy and classifier-FID / floor.

    sdlab distill -o runs/lcm                                  # 20-50 minutes on 2 CPU cores
    python scripts/eval_distilled.py --lcm runs/lcm/model      # ~3 minutes; writes docs/eval/distilled.*
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from sdlab.evaluation.provenance import write_measurement

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lcm", help="an LCM model folder made by `sdlab distill` (its OUTPUT/model)")
    parser.add_argument("--per-digit", type=int, default=100, help="images per digit per row")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16, every row")
    parser.add_argument("-o", "--output", default="runs/eval", help="folder for distilled.json and .md")
    args = parser.parse_args()

    import sdlab
    from sdlab.digits.data import to_gray
    from sdlab.evaluation.digits import Judge
    from sdlab.evaluation.metrics import prompt_accuracy
    from sdlab.loading.decoder import load_vae_decoder, vae_decoder_folder

    judge = Judge.load()
    prompts = [f"a handwritten digit {d}" for d in range(10) for _ in range(args.per_digit)]
    wanted = np.repeat(np.arange(10), args.per_digit)
    teacher = sdlab.load_pipeline(dtype=args.dtype)
    tiny = load_vae_decoder(vae_decoder_folder("tiny", teacher.source), dtype=teacher.dtype)
    rows = []

    def row(label: str, pipe, **kwargs) -> None:
        with torch.no_grad():
            pipe.generate(prompts[:100], seed=list(range(100)), **kwargs)  # warm-up
        grays, passes, start = [], None, time.perf_counter()
        for first in range(0, len(prompts), 100):
            chunk = prompts[first : first + 100]
            with torch.no_grad():
                result = pipe.generate(chunk, seed=list(range(first, first + len(chunk))), **kwargs)
            passes = result.settings["unet_evaluations"]
            grays.append(to_gray(result.pixels).numpy())
        ms = (time.perf_counter() - start) / len(prompts) * 1000
        gray = np.concatenate(grays)
        rows.append({
            "path": label,
            "ms_per_image": ms,
            "unet_evaluations": passes,
            "prompt_accuracy": prompt_accuracy(judge.predict(gray), wanted),
            "fid_ratio": judge.fid(gray) / judge.floor(len(gray)),
        })  # fmt: skip
        r = rows[-1]
        print(f"  {label}: {ms:.1f} ms, {passes} passes, accuracy {r['prompt_accuracy']:.3f}, "
              f"FID/floor {r['fid_ratio']:.2f}", flush=True)  # fmt: skip

    row(
        "teacher, defaults (UniPC 6 steps, CFG 3 at sigma <= 1.5, deep cache 2: steps 1 and 5 shallow)",
        teacher,
    )
    row("teacher, defaults + tiny decoder", teacher, vae_decoder=tiny)
    row("teacher, defaults without deep cache", teacher, deep_cache=1)
    row(
        "teacher, UniPC 4 steps, no guidance",
        teacher,
        num_inference_steps=4,
        guidance_scale=1.0,
        deep_cache=1,
    )
    row(
        "teacher, UniPC 2 steps, no guidance",
        teacher,
        num_inference_steps=2,
        guidance_scale=1.0,
        deep_cache=1,
    )
    row("teacher, UniPC 2 steps, CFG 3 every step", teacher, num_inference_steps=2, guidance_scale=3.0,
        guidance_interval=(0.0, None), deep_cache=1)  # fmt: skip
    if args.lcm:
        lcm = sdlab.load_pipeline(args.lcm, dtype=args.dtype)
        scale = lcm.recommended.guidance_scale
        for steps in (4, 2, 1):
            row(
                f"LCM, {steps} step{'s' if steps > 1 else ''} (w = {scale - 1:g})",
                lcm,
                num_inference_steps=steps,
            )
        row("LCM, 4 steps + tiny decoder", lcm, num_inference_steps=4, vae_decoder=tiny)
        # deep cache on top: the speed-up that brings SD 1.5's few-step path under 5 s (bench_fast.py)
        row("LCM, 2 steps, deep cache 2", lcm, num_inference_steps=2, deep_cache=2)
        row("LCM, 4 steps, deep cache 3", lcm, num_inference_steps=4, deep_cache=3)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    report = {"dtype": args.dtype, "images_per_row": len(prompts), "rows": rows}
    write_measurement(out / "distilled.json", report)
    lines = [
        f"The digits model's distilled parts, {len(prompts)} images per row, {args.dtype} "
        "(`python scripts/eval_distilled.py --lcm runs/lcm/model`).",
        "",
        "| path | ms / image | UNet passes / image | prompt accuracy | FID / floor |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['path']} | {r['ms_per_image']:.1f} | {r['unet_evaluations']} | {r['prompt_accuracy']:.3f} | "
        f"{r['fid_ratio']:.2f} |"
        for r in rows
    ]
    (out / "distilled.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
