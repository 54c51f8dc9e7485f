"""Peak memory of one 512x512 SD 1.5 image, each path in a fresh process (issue 13, item 4).

The model is an SD 1.5-architecture checkpoint with random weights, written as a float16 single file by
sdlab's exporter (as `bench_fast.py --sd15` makes it). Each path runs in a child process that loads the
file and generates one 512x512 image with 1 UNet step and the decode; the row is that process's peak
resident set size (`ru_maxrss`, what `/usr/bin/time -v` reports), in GB, and its wall time:

- sdlab, float32 and bfloat16 (`load_pipeline(file, dtype=...)`: the single file is read tensor by
  tensor and cast as it is read), one DPM++ 2M step with CFG, decoded by the full VAE, and in bfloat16
  decoded by a TAESD-shaped `AutoencoderTiny` (random weights: the few-step path's decoder);
- stable-diffusion.cpp through the `cyllama` wheel, the same f16 file, one step with CFG (if installed).

    python scripts/bench_memory.py --file runs/bench/random-sd15.safetensors   # ~3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from sdlab.evaluation.provenance import write_measurement

SDLAB = """
import resource, sys, torch
from diffusers import AutoencoderTiny
from sdlab.loading import load_pipeline
pipe = load_pipeline(sys.argv[1], device="cpu", dtype=sys.argv[2])
decoder = AutoencoderTiny().to(pipe.dtype) if sys.argv[3:] == ["taesd"] else None
pipe.generate("a photo of a cat", num_inference_steps=1, scheduler="dpmpp_2m", guidance_scale=7.5,
              height=512, width=512, seed=0, vae_decoder=decoder)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

SDCPP = """
import resource, sys, torch
from cyllama.sd import text_to_image
text_to_image(model_path=sys.argv[1], prompt="a photo of a cat", width=512, height=512, seed=0,
              sample_steps=1, cfg_scale=7.5, n_threads=torch.get_num_threads())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak(code: str, *args: str) -> tuple[float, float]:
    """(peak RSS in GB, seconds) of `code` run in a fresh Python process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1]) / 1e6, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--file", required=True, help="an SD 1.5 single file (bench_fast.py --sd15 writes one)"
    )
    parser.add_argument("--json", default="runs/bench/bench_memory.json", help="where the rows are written")
    args = parser.parse_args()
    rows = []
    for label, code, extra in (
        ("sdlab, float32", SDLAB, ["float32"]),
        ("sdlab, bfloat16", SDLAB, ["bfloat16"]),
        ("sdlab, bfloat16, decoded by a TAESD-shaped tiny decoder", SDLAB, ["bfloat16", "taesd"]),
        ("stable-diffusion.cpp (cyllama), f16 weights", SDCPP, []),
    ):
        try:
            gb, seconds = peak(code, args.file, *extra)
        except subprocess.CalledProcessError as err:
            print(f"  {label}: failed ({err.stderr.strip().splitlines()[-1] if err.stderr.strip() else err})")
            continue
        rows.append({"path": label, "peak_rss_gb": gb, "seconds": seconds})
        print(f"  {label}: peak {gb:.2f} GB in {seconds:.0f} s", flush=True)
    write_measurement(args.json, {"file": str(args.file), "rows": rows})
    print(
        "\n| path (one 512x512 image, 1 step with CFG, decode) | peak RSS | wall time |\n| --- | --- | --- |"
    )
    for r in rows:
        print(f"| {r['path']} | {r['peak_rss_gb']:.2f} GB | {r['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
