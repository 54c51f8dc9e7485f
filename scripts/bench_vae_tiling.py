"""Tiled VAE decoding (`--vae-tiling`, diffusers' `enable_tiling`): peak memory, time and pixel difference
against the whole decode, at 1024x1024 and 2048x2048 (issue 21, item 3).

The VAE is SD 1.5's architecture (sdlab's shipped config) with seeded random weights, in float32 on the CPU;
the latents are seeded Gaussian noise. Each row runs in a fresh process, so its peak resident set size
(`ru_maxrss`) is that decode's alone (the process's baseline, torch and the VAE, is measured too and shown).
The difference is in 8-bit levels between the tiled and the whole decode of the same latents; random weights
give textures unlike a real model's, so it bounds the seams' size, not how visible they are.

    python scripts/bench_vae_tiling.py                 # about 10 minutes on 2 cores
    python scripts/bench_vae_tiling.py --sizes 1024    # about 1 minute
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from sdlab.evaluation.provenance import write_measurement

DECODE = """
import resource, sys, time, torch
from diffusers import AutoencoderKL
from sdlab.loading.single_file import CONFIGS_DIR
from sdlab.sampling.latents import decode_latents, tiled_vae
torch.manual_seed(0)
vae = AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIGS_DIR / "sd15" / "vae")).eval()
size, tiled, out = int(sys.argv[1]), sys.argv[2] == "tiled", sys.argv[3]
latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(1))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if size:
    start = time.perf_counter()
    with torch.no_grad(), tiled_vae(vae, tiled):
        pixels = decode_latents(vae, latents)
    seconds = time.perf_counter() - start
    torch.save(((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), out)
else:
    seconds = 0.0
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, seconds)
"""


def run(size: int, mode: str, out: Path) -> tuple[float, float, float]:
    """(baseline GB, peak GB, decode seconds) of one decode in a fresh process."""
    done = subprocess.run([sys.executable, "-c", DECODE, str(size), mode, str(out)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    base, peak, seconds = done.stdout.split()[-3:]
    return int(base) / 1e6, int(peak) / 1e6, float(seconds)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,2048", help="image sides in pixels, comma-separated")
    parser.add_argument("--json", default="runs/bench_vae_tiling.json", help="where the rows are written")
    args = parser.parse_args()
    work = Path(args.json).parent
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        decoded = {}
        for mode in ("whole", "tiled"):
            base, peak, seconds = run(size, mode, work / f"vae-{size}-{mode}.pt")
            decoded[mode] = torch.load(work / f"vae-{size}-{mode}.pt").to(torch.int16)
            rows.append({"size": size, "mode": mode, "baseline_gb": round(base, 2), "peak_gb": round(peak, 2),
                         "decode_s": round(seconds, 1)})  # fmt: skip
        diff = (decoded["whole"] - decoded["tiled"]).abs().float()
        rows[-1].update(max_levels=int(diff.max()), mean_levels=round(float(diff.mean()), 3))
        for mode in ("whole", "tiled"):
            (work / f"vae-{size}-{mode}.pt").unlink()
    record = write_measurement(args.json, {"dtype": "float32", "rows": rows})
    print("| size | decode | peak RSS (GB) | above baseline (GB) | time (s) | max / mean diff (levels) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        diff = f"{r['max_levels']} / {r['mean_levels']}" if "max_levels" in r else ""
        print(f"| {r['size']}² | {r['mode']} | {r['peak_gb']} | {r['peak_gb'] - r['baseline_gb']:.2f} | "
              f"{r['decode_s']} | {diff} |")  # fmt: skip
    print(record["provenance"])


if __name__ == "__main__":
    main()
