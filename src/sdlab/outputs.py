"""Saving generated images with their recipe, and reading a recipe back for `sdlab replay`.

Every PNG carries two text chunks: `parameters`, AUTOMATIC1111's format, which the PNG-info readers
people already use understand; and `sdlab`, the resolved options as JSON, enough to regenerate it.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from PIL import Image

from sdlab.errors import InputError
from sdlab.images import GRID_CHUNK, OUTPUT_FORMATS, make_grid, read_image_text, save_image
from sdlab.metadata import format_parameters, parse_parameters
from sdlab.pipeline import Pipeline
from sdlab.sampling.hires import hires_from_infotext, hires_infotext, records_hires
from sdlab.sampling.loop import GenerationResult
from sdlab.sampling.params import EVERY_STEP, PACKAGE_BASE, SamplingParams, neutral
from sdlab.sampling.schedulers import (
    a1111_sampler,
    resolve_sampler,
    schedule_settings,
    scheduler_name_from_config,
)
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
        **({"compile": pipe.compiled} if pipe.compiled else {}),  # pixels within rounding of eager's
        "model_hash": pipe.model_hash(),
        "sdlab_version": __version__,
    }


def infotext(r: dict, pipe: Pipeline | None = None) -> str:
    """A1111's `parameters` text for one image's recipe.

    A setting sdlab adds (a guidance interval, a deep cache) is written when it is on, and also when it is
    off where leaving it out would turn it on: an A1111 client that re-posts the infotext's steps,
    sampler and CFG scale to a model whose recommendation includes it (`pipe.recommended`) gets the
    same image."""
    sampler, schedule = a1111_sampler(r["scheduler"], r.get("timestep_spacing"), r.get("sigma_schedule"))
    settings: dict[str, object] = {
        "Steps": r["num_inference_steps"],
        "Sampler": sampler,
        "Schedule type": schedule,  # A1111 1.9+'s form ("DPM++ 2M" + "Karras"); None is left out
        "CFG scale": r["guidance_scale"],
        "Seed": r["seed"],
        "Size": f"{r['width']}x{r['height']}",
        "Model hash": r["model_hash"],
        "Model": Path(r["model"]).stem if r.get("model") else "",
    }
    implied = {}
    if pipe is not None:  # what a request with this image's steps, sampler and CFG scale alone would run
        base = SamplingParams(**{k: r.get(k) for k in PACKAGE_BASE})
        implied = base.resolve(pipe.recommended, scheduler_name_from_config(pipe.scheduler_config)).recipe()
    for f in fields(SamplingParams):
        key = f.metadata.get("infotext")
        if key is None or key in settings or f.name not in r:
            continue
        value = _plain(r[f.name])  # JSON gives lists where the parameters hold tuples
        if value != neutral(f.name) or _plain(implied.get(f.name, value)) != value:
            settings[key] = _infotext_value(f.name, value)
    settings.update(hires_infotext(r))  # "Denoising strength", "Hires upscale", ... (A1111's)
    if r.get("padding_mask_crop") is not None:
        settings["Inpaint area"] = "Only masked"  # A1111 writes it beside "Masked area padding"
    if r.get("vae_decoder"):
        settings["VAE Decoder"] = Path(r["vae_decoder"]).name  # a tiny decoder (TAESD) drew the image
    settings["Version"] = f"sdlab {r['sdlab_version']}"
    return format_parameters(r["prompt"], r["negative_prompt"], settings)


def _plain(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _infotext_value(name: str, value: Any) -> object:
    # the guidance interval: a sigma range, as extensions add their settings ("0.3 to 5.0", "1.0 to inf")
    if name == "guidance_interval":
        lo, hi = value
        return f"{float(lo)!r} to {'inf' if hi is None else repr(float(hi))}"
    if name == "clip_skip":  # A1111 counts the layer read: "Clip skip: 1" is the last, diffusers' 0
        return value + 1
    return value


def save_result(
    result: GenerationResult, output: str | Path, pipe: Pipeline, sources: dict[str, Any] | None = None
) -> list[Path]:
    """One image to `output`; several to `out-0.png ... out-(N-1).png` plus a grid `out-grid.png`."""
    recipes = [recipe(result, i, pipe, sources) for i in range(len(result.images))]
    return write_pngs(result.images, recipes, output, [infotext(r, pipe) for r in recipes])


def write_pngs(
    images: list[Image.Image], recipes: list[dict], output: str | Path, infotexts: list[str] | None = None
) -> list[Path]:
    """Images with their recipes: `output` for one; `out-0.png ...` plus `out-grid.png` for several.

    `infotexts` are the images' A1111 `parameters` (default: `infotext(recipe)`). A `.jpg` or `.webp`
    output carries them in its EXIF UserComment, as A1111 saves them; only a PNG also keeps sdlab's recipe."""
    output = check_output(output)
    infotexts = infotexts or [infotext(r) for r in recipes]
    if len(images) == 1:
        targets = [output]
    else:
        targets = [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(len(images))]
    written = []
    for image, r, text, target in zip(images, recipes, infotexts, targets, strict=True):
        written.append(save_image(image, target, parameters=text, extra={"sdlab": json.dumps(r)}))
    if len(images) > 1:  # the grid carries its first image's parameters, as A1111's grids do
        grid = output.with_name(f"{output.stem}-grid{output.suffix}")
        marked = {GRID_CHUNK: str(len(images))}  # datasets leave grids out (`sdlab.datasets.read_folder`)
        written.append(save_image(make_grid(images), grid, parameters=infotexts[0], extra=marked))
    return written


def check_output(output: str | Path) -> Path:
    output = Path(output)
    if output.suffix.lower() not in OUTPUT_FORMATS:
        raise InputError(
            f"output {output} must end in .png (the recipe in its text chunks), or .jpg or .webp (A1111's EXIF "
            "parameters)"
        )
    return output


def read_recipe(path: str | Path) -> dict:
    """The recipe of an image sdlab made (its `sdlab` chunk), or one rebuilt from A1111 `parameters` (a PNG's
    chunk, or a JPEG's or WebP's EXIF UserComment)."""
    chunks = read_image_text(path)
    if "sdlab" in chunks:
        try:
            recipe = json.loads(chunks["sdlab"])
        except json.JSONDecodeError as err:
            raise InputError(f"{path} has a damaged sdlab recipe chunk: {err}") from err
        # an image made before guidance intervals was guided at every step, whatever the model now recommends
        recipe.setdefault("guidance_interval", list(EVERY_STEP))
        recipe.setdefault("deep_cache", 1)  # and ran the UNet whole at every step
        return recipe
    if "parameters" not in chunks:
        raise InputError(
            f"{path} carries no generation parameters (no 'parameters' or 'sdlab' PNG chunk, no EXIF UserComment)"
        )
    missing = unapplied(parse_parameters(chunks["parameters"])[2])
    if missing:  # a replay claims the image; one sdlab cannot make is refused by name, not approximated
        raise InputError(
            f"{path}: {missing[0]}, which sdlab does not apply yet, so the image would not be this one"
        )
    return parameters_recipe(chunks["parameters"], str(path))


def parameters_recipe(text: str, where: str) -> dict:
    """A recipe rebuilt from A1111 `parameters` text (`where` names its source in errors): prompts, seed,
    size, sampler, and every setting with an infotext name; one left out is off (A1111's meaning). Fields
    sdlab does not apply are not read here: `unapplied` names them, and `read_recipe` refuses them."""
    prompt, negative, s = parse_parameters(text)
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
        r.update(schedule_settings(s.get("Schedule type"), r["scheduler"]))  # SGM Uniform, sigma schedules
    except InputError as err:  # a sampler or schedule type sdlab does not have: its own sentence
        raise InputError(f"{where}: {err}") from None
    except (KeyError, ValueError) as err:
        raise InputError(f"{where}: its 'parameters' chunk lacks a readable {err} setting") from err
    for f in fields(SamplingParams):  # sdlab's and A1111's optional settings; left out: off
        key = f.metadata.get("infotext")
        if key is None or f.name in r:
            continue
        hires = key == "Denoising strength" and records_hires(s)  # then it is the hires fix's 2nd pass's
        if key not in s or hires:
            if neutral(f.name) is not None:
                r[f.name] = list(EVERY_STEP) if f.name == "guidance_interval" else neutral(f.name)
            continue
        try:
            r[f.name] = _parse_infotext_value(f.name, s[key])
        except ValueError as err:
            raise InputError(f"{where}: unreadable {key!r} {s[key]!r}") from err
    try:
        r.update(hires_from_infotext(s))
    except InputError as err:
        raise InputError(f"{where}: {err}") from None
    return r


# A1111 infotext fields that change the image and that sdlab does not apply: (what it asks for, its values that
# change nothing). Reading one with another value is refused by name, never dropped (issue 21). Extensions'
# fields that record without changing (LoRA hashes, ADetailer's) are read and ignored.
NOT_APPLIED = {
    "Hires checkpoint": ("a second model for the hires pass", ("Use same checkpoint",)),
    "Variation seed": ("variation seeds", ()), "Variation seed strength": ("variation seeds", ("0", "0.0")),
    "Seed resize from": ("variation seeds", ("-1x-1",)),
    "Face restoration": ("face restoration", ()), "Refiner": ("A1111's refiner switch", ()),
    "Eta": ("an ancestral eta", ("1", "1.0")), "Noise multiplier": ("a noise multiplier", ("1", "1.0")),
    "Token merging ratio": ("token merging", ("0", "0.0")), "Tiling": ("seamless tiling", ("False",)),
    "Sigma churn": ("sampler noise settings", ("0", "0.0")), "Sigma tmin": ("sampler noise settings", ("0", "0.0")),
    "Sigma noise": ("sampler noise settings", ("1", "1.0")), "s_noise": ("sampler noise settings", ("1", "1.0")),
    "Emphasis": ("another emphasis mode", ("Original",)),
    "Downcast alphas_cumprod": ("a downcast noise schedule", ("False",)),
}  # fmt: skip


def unapplied(settings: dict[str, str]) -> list[str]:
    """Sentences, one per field of `NOT_APPLIED` in `settings` that asks for something sdlab does not apply:
    "'Variation seed: 5' asks for variation seeds"."""
    found = []
    for key, (feature, neutral_values) in NOT_APPLIED.items():
        value = settings.get(key)
        if value is not None and value.strip() not in neutral_values:
            found.append(f"'{key}: {value}' asks for {feature}")
    return found


def _parse_infotext_value(name: str, text: str) -> Any:
    if name == "guidance_interval":
        lo, _, hi = text.partition(" to ")
        return [float(lo), None if hi == "inf" else float(hi)]
    if name == "clip_skip":
        return int(text) - 1
    kind = str(SamplingParams.__dataclass_fields__[name].type)  # "int", "int | None", "str", ...
    if kind == "bool":
        if text not in ("True", "False"):
            raise ValueError(text)
        return text == "True"
    if kind.startswith("str"):
        return text
    return int(text) if kind.startswith("int") else float(text)


def interval_text(interval: list | None) -> str | None:
    """[lo, hi] -> "lo to hi" for the infotext ("0.3 to 5.0", "1.0 to inf"); None when guided at every step."""
    if not interval or (interval[0] == 0 and interval[1] is None):
        return None
    lo, hi = interval
    return f"{float(lo)!r} to {'inf' if hi is None else repr(float(hi))}"
