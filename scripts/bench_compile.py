"""`--compile` measured: eager against `Pipeline.compile()` in one process, on the same model and inputs.

For each model: the time of the first compiled call (it compiles every graph the call needs), the warm
seconds of eager and compiled calls (median of 3), their ratio, and the largest 8-bit pixel difference
between the compiled and the eager image.

    python scripts/bench_compile.py [--sd15] [--out docs/bench_compile.json]

The digits model: 100 images at its recommended sampler, steps and CFG with the UNet whole at every step
(a deep cache runs the UNet's full passes eager, so it would hide the compiled UNet), float32 and
`--dtype auto`. `--sd15`: an SD 1.5-architecture UNet with random weights at 512x512, 2 DPM++ steps with
CFG (about a minute to compile on a 2-core CPU, then seconds a step).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from sdlab.evaluation.provenance import write_measurement


def seconds(run, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row(label: str, pipe, run) -> dict:
    """Eager, then compiled: first-call time, warm times, pixel difference."""
    run()  # warm
    eager = np.stack([np.asarray(i, dtype=np.int16) for i in run().images])
    eager_s = seconds(run)
    pipe.compile()
    start = time.perf_counter()
    compiled = np.stack([np.asarray(i, dtype=np.int16) for i in run().images])
    first = time.perf_counter() - start
    compiled_s = seconds(run)
    result = {
        "model": label,
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "first_compiled_call_s": round(first, 1),
        "eager_s": round(eager_s, 3),
        "compiled_s": round(compiled_s, 3),
        "speedup": round(eager_s / compiled_s, 2),
        "max_pixel_difference": int(np.abs(compiled - eager).max()),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sd15", action="store_true", help="also an SD 1.5-architecture UNet at 512x512")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    import sdlab

    rows = []
    for dtype in ("float32", "auto"):
        pipe = sdlab.load_pipeline(dtype=dtype)
        prompts = [f"a handwritten digit {d}" for d in range(10)]

        def run(pipe=pipe, prompts=prompts):
            return pipe.generate(prompts, num_images_per_prompt=10, seed=0, deep_cache=1)

        rows.append(row("digits, 100 images, UniPC 6 steps, CFG 3 at sigma <= 1.5", pipe, run))
    if args.sd15:
        sys.path.insert(0, str(Path(__file__).parent))
        import check_cuda  # its SD 1.5-architecture model with random weights

        check_cuda.DEVICE = "cpu"
        pipe = check_cuda.random_sd15()

        def run_sd():
            return pipe.generate("a photo of a cat", scheduler="dpmpp_2m", num_inference_steps=2,
                                 guidance_scale=7.5, height=512, width=512, seed=0)  # fmt: skip

        rows.append(
            row("SD 1.5 architecture (random weights), 512x512, 2 DPM++ steps with CFG", pipe, run_sd)
        )
    if args.out:
        write_measurement(args.out, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
