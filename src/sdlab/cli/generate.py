"""`sdlab generate` and `sdlab replay`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sdlab.cli.options import GenerateOptions, ModelOptions, ReplayOptions
from sdlab.errors import InputError
from sdlab.images import load_image
from sdlab.loading import load_pipeline
from sdlab.outputs import check_output, read_recipe, save_result
from sdlab.pipeline import Pipeline
from sdlab.sampling.loop import GenerationResult, generate

GENERATE_ARGS = (
    "negative_prompt", "scheduler", "num_inference_steps", "guidance_scale", "guidance_rescale", "seed",
    "height", "width", "num_images_per_prompt", "init_image", "strength", "mask_image", "eta",
)  # fmt: skip


def load_model(opts: ModelOptions) -> Pipeline:
    return load_pipeline(
        opts.model, device=opts.device, dtype=opts.dtype, allow_pickle=opts.allow_pickle, config=opts.config
    )


def run_generate(opts: GenerateOptions) -> list[Path]:
    output = Path(opts.output) if opts.output else _next_output()
    check_output(output)
    guide = _guide(opts.guide_digit, opts.guide_scale)
    pipe = load_model(opts)
    additions = add_to_model(pipe, opts.embedding, opts.lora, allow_pickle=opts.allow_pickle)
    kwargs = {k: getattr(opts, k) for k in GENERATE_ARGS}
    result = _generate_with_progress(pipe, opts.prompt, guide=guide, **kwargs)
    sources = {"init_image": _abs(opts.init_image), "mask_image": _abs(opts.mask_image), **additions}
    written = save_result(result, output, pipe, sources)
    for path in written:
        print(path)
    return written


def run_replay(opts: ReplayOptions) -> Path:
    output = Path(opts.output or Path(opts.image).with_name(Path(opts.image).stem + "-replay.png"))
    check_output(output)
    recipe = read_recipe(opts.image)
    model = opts.model or recipe.get("model")
    if not model:
        raise InputError(f"{opts.image} does not say which model made it; pass --model PATH")
    pipe = load_model(dataclasses.replace(opts, model=model))
    additions = add_to_model(
        pipe, recipe.get("embedding"), recipe.get("lora"), allow_pickle=opts.allow_pickle
    )
    kwargs = {k: recipe[k] for k in GENERATE_ARGS if k in recipe and k != "num_images_per_prompt"}
    for key in ("init_image", "mask_image"):
        if key in kwargs and not Path(kwargs[key]).exists():
            raise InputError(
                f"{opts.image} was made from {key.replace('_', ' ')} {kwargs[key]}, which no longer exists"
            )
    if recipe.get("strength") is not None and "init_image" not in kwargs:
        raise InputError(f"{opts.image} is an image-to-image result, but its recipe names no init image file")
    index = recipe.get("batch_index", 0)
    kwargs["num_images_per_prompt"] = recipe.get("batch_size", 1)
    kwargs["seed"] = recipe["seed"] - index
    guide = _guide(recipe.get("guide_digit"), recipe.get("guide_scale", 0.0))
    result = _generate_with_progress(pipe, recipe["prompt"], guide=guide, **kwargs)
    result = result.select(index)
    sources = {**{k: recipe.get(k) for k in ("init_image", "mask_image")}, **additions}
    (path,) = save_result(result, output, pipe, sources)
    original = np.asarray(load_image(opts.image), dtype=np.int16)
    replayed = np.asarray(result.images[0], dtype=np.int16)
    if original.shape != replayed.shape:
        print(f"{path}: size differs from {opts.image}")
    else:
        diff = np.abs(original - replayed).max()
        print(
            f"{path}: {'identical pixels' if diff == 0 else f'max pixel difference {diff}'} to {opts.image}"
        )
    return path


def _generate_with_progress(pipe: Pipeline, prompt: str, **kwargs) -> GenerationResult:
    """`generate` with a tqdm bar, opened at the first step so that bad input prints only its error."""
    bars: list[tqdm] = []

    def callback(step: int, total: int, t, latents) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="denoising", unit="step", leave=False))
        bars[0].update(1)

    try:
        return generate(pipe, prompt, callback=callback, **kwargs)
    finally:
        for bar in bars:
            bar.close()


def add_to_model(pipe: Pipeline, embeddings: str | None, loras: str | None, *, allow_pickle: bool) -> dict:
    """Load comma-separated embeddings and FILE[:WEIGHT] LoRAs into `pipe`; returns them for the recipe."""
    from sdlab.embeddings import load_embedding
    from sdlab.lora import load_lora, parse_lora_spec

    recorded = {}
    if embeddings:
        files = [_abs(e.strip()) for e in embeddings.split(",") if e.strip()]
        for file in files:
            load_embedding(pipe, file, allow_pickle=allow_pickle)
        recorded["embedding"] = ",".join(files)
    if loras:
        specs = [parse_lora_spec(spec.strip()) for spec in loras.split(",") if spec.strip()]
        for file, weight in specs:
            load_lora(pipe, file, weight, allow_pickle=allow_pickle)
        recorded["lora"] = ",".join(f"{_abs(file)}:{weight:g}" for file, weight in specs)
    return recorded


def _guide(digit: int | None, scale: float):
    if digit is None:
        return None
    from sdlab.digits.guidance import digit_guide

    return digit_guide(digit, scale)


def _abs(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def _next_output(folder: Path = Path("outputs")) -> Path:
    """outputs/00001.png, 00002.png, ...: a default output never overwrites an earlier one."""
    taken = [int(p.stem.split("-")[0]) for p in folder.glob("*.png") if p.stem.split("-")[0].isdigit()]
    return folder / f"{max(taken, default=0) + 1:05d}.png"
