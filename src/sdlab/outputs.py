"""Saving generated images with their recipe, and reading a recipe back for `sdlab replay`.

Every PNG carries two text chunks: `parameters`, AUTOMATIC1111's format, which the PNG-info readers
people already use understand; and `sdlab`, the resolved options as JSON, enough to regenerate it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from sdlab.errors import InputError
from sdlab.images import make_grid, read_png_text, save_png
from sdlab.metadata import format_parameters, parse_parameters
from sdlab.pipeline import Pipeline
from sdlab.sampling.loop import GenerationResult
from sdlab.sampling.schedulers import a1111_sampler, resolve_sampler
from sdlab.version import __version__


def recipe(
    result: GenerationResult, index: int, pipe: Pipeline, sources: dict[str, Any] | None = None
) -> dict:
    """Everything needed to make image `index` of `result` again, alone."""
    settings = {k: v for k, v in result.settings.items() if v is not None}
    return {
        "prompt": result.prompts[index],
        "negative_prompt": result.negative_prompts[index],
        "seed": result.seeds[index],
        # batched convolutions may differ from a lone image's in the last float bit, which can flip an
        # 8-bit rounding: replay regenerates the whole batch to give identical pixels
        "batch_size": len(result.images),
        "batch_index": index,
        **settings,
        "model": pipe.source,
        "dtype": str(pipe.dtype).removeprefix(
            "torch."
        ),  # `--dtype auto` differs by machine: replay repeats it
        **{k: v for k, v in (sources or {}).items() if v is not None},
        "model_hash": pipe.model_hash(),
        "sdlab_version": __version__,
    }


def infotext(r: dict) -> str:
    """A1111's `parameters` text for one image's recipe."""
    sampler, schedule = a1111_sampler(r["scheduler"])
    settings = {
        "Steps": r["num_inference_steps"],
        "Sampler": sampler,
        "Schedule type": schedule,  # A1111 1.9+'s form ("DPM++ 2M" + "Karras"); None is left out
        "CFG scale": r["guidance_scale"],
        "Seed": r["seed"],
        "Size": f"{r['width']}x{r['height']}",
        "Model hash": r["model_hash"],
        "Model": Path(r["model"]).stem if r.get("model") else "",
    }
    if r.get("strength") is not None:
        settings["Denoising strength"] = r["strength"]
    if r.get("guidance_rescale"):
        settings["CFG Rescale phi"] = r["guidance_rescale"]
    if r.get("vae_decoder"):
        settings["VAE Decoder"] = Path(r["vae_decoder"]).name  # a tiny decoder (TAESD) drew the image
    if (text := interval_text(r.get("guidance_interval"))) is not None:
        settings["Guidance interval"] = text  # sigma range, as extensions add their settings
    if (
        r.get("deep_cache") is not None
    ):  # every N steps the UNet ran whole (DeepCache); 1: against the model's
        settings["Deep cache"] = r["deep_cache"]
    settings["Version"] = f"sdlab {r['sdlab_version']}"
    return format_parameters(r["prompt"], r["negative_prompt"], settings)


def save_result(
    result: GenerationResult, output: str | Path, pipe: Pipeline, sources: dict[str, Any] | None = None
) -> list[Path]:
    """One image to `output`; several to `out-0.png ... out-(N-1).png` plus a grid `out-grid.png`."""
    recipes = [recipe(result, i, pipe, sources) for i in range(len(result.images))]
    return write_pngs(result.images, recipes, output)


def write_pngs(images: list[Image.Image], recipes: list[dict], output: str | Path) -> list[Path]:
    """Images with their recipes as PNGs: `output` for one; `out-0.png ...` plus `out-grid.png` for several."""
    output = check_output(output)
    if len(images) == 1:
        targets = [output]
    else:
        targets = [output.with_name(f"{output.stem}-{i}.png") for i in range(len(images))]
    written = []
    for image, r, target in zip(images, recipes, targets, strict=True):
        written.append(save_png(image, target, parameters=infotext(r), extra={"sdlab": json.dumps(r)}))
    if len(images) > 1:  # the grid carries its first image's parameters, as A1111's grids do
        grid = output.with_name(f"{output.stem}-grid.png")
        written.append(save_png(make_grid(images), grid, parameters=infotext(recipes[0])))
    return written


def check_output(output: str | Path) -> Path:
    output = Path(output)
    if output.suffix.lower() != ".png":
        raise InputError(f"output {output} must end in .png (the recipe is stored in PNG text chunks)")
    return output


def read_recipe(path: str | Path) -> dict:
    """The recipe of an image sdlab made (its `sdlab` chunk), or one rebuilt from A1111 `parameters`."""
    chunks = read_png_text(path)
    if "sdlab" in chunks:
        try:
            recipe = json.loads(chunks["sdlab"])
        except json.JSONDecodeError as err:
            raise InputError(f"{path} has a damaged sdlab recipe chunk: {err}") from err
        # an image made before guidance intervals was guided at every step, whatever the model now recommends
        recipe.setdefault("guidance_interval", [0.0, None])
        recipe.setdefault("deep_cache", 1)  # and ran the UNet whole at every step
        return recipe
    if "parameters" not in chunks:
        raise InputError(f"{path} carries no generation parameters (no 'parameters' or 'sdlab' PNG chunk)")
    prompt, negative, s = parse_parameters(chunks["parameters"])
    try:
        width, height = (int(v) for v in s["Size"].split("x"))
        r = {
            "prompt": prompt,
            "negative_prompt": negative,
            "seed": int(s["Seed"]),
            "num_inference_steps": int(s["Steps"]),
            "guidance_scale": float(s["CFG scale"]),
            # old A1111 wrote "DPM++ 2M Karras", 1.9+ writes "DPM++ 2M" and "Schedule type: Karras"
            "scheduler": resolve_sampler(s.get("Sampler", "PLMS"), s.get("Schedule type")),
            "width": width,
            "height": height,
        }
    except (KeyError, ValueError) as err:
        raise InputError(f"{path}: its 'parameters' chunk lacks a readable {err} setting") from err
    if "Denoising strength" in s and "Hires upscale" not in s:  # with hires fix it is the second pass's
        r["strength"] = float(s["Denoising strength"])
    if "CFG Rescale phi" in s:
        r["guidance_rescale"] = float(s["CFG Rescale phi"])
    # an image made without one was guided at every step, whatever the model now recommends
    r["guidance_interval"] = [0.0, None]
    try:
        r["deep_cache"] = int(s.get("Deep cache", 1))
    except ValueError as err:
        raise InputError(f"{path}: unreadable 'Deep cache' {s['Deep cache']!r}") from err
    if "Guidance interval" in s:
        lo, _, hi = s["Guidance interval"].partition(" to ")
        try:
            r["guidance_interval"] = [float(lo), None if hi == "inf" else float(hi)]
        except ValueError as err:
            raise InputError(f"{path}: unreadable 'Guidance interval' {s['Guidance interval']!r}") from err
    return r


def interval_text(interval: list | None) -> str | None:
    """[lo, hi] -> "lo to hi" for the infotext ("0.3 to 5.0", "1.0 to inf"); None when guided at every step."""
    if not interval or (interval[0] == 0 and interval[1] is None):
        return None
    lo, hi = interval
    return f"{float(lo)!r} to {'inf' if hi is None else repr(float(hi))}"
