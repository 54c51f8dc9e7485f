"""Command options as dataclasses; argparse flags are generated from them, one-to-one.

Field names are diffusers' argument names; flags are the same names in kebab-case, plus the short
aliases users expect (`--steps` for `--num-inference-steps`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from sdlab.sampling.schedulers import SCHEDULERS

METAVARS = {int: "N", float: "X", str: "TEXT"}
PATHS = {"model", "config", "init_image", "mask_image", "output", "image"}


def option(default: Any, help: str, *aliases: str, positional: bool = False, **argparse_kwargs: Any) -> Any:
    meta = {"help": help, "aliases": aliases, "positional": positional, **argparse_kwargs}
    return field(default=default, metadata=meta)


@dataclass
class ModelOptions:
    model: str | None = option(
        None, "diffusers folder or single-file .safetensors checkpoint (default: the shipped digits model)"
    )
    device: str = option("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "auto (float16 on CUDA, else float32), float32, float16 or bfloat16")
    allow_pickle: bool = option(False, "allow pickle checkpoints (.ckpt/.pt/.bin), loaded with weights_only")
    config: str | None = option(
        None, "diffusers config folder describing a non-standard single-file checkpoint"
    )


@dataclass
class GenerateOptions(ModelOptions):
    prompt: str = option("", "what to draw; (word:1.3) emphasis, [word] de-emphasis, BREAK", positional=True)
    negative_prompt: str | None = option(
        None, "what to steer away from: replaces the empty prompt in guidance"
    )
    scheduler: str | None = option(
        None, "sampler (default: the model's own)", choices=list(SCHEDULERS), metavar="NAME"
    )
    num_inference_steps: int = option(30, "denoising steps", "--steps")
    guidance_scale: float = option(7.5, "classifier-free guidance scale; <= 1 means no guidance", "--cfg")
    guidance_rescale: float = option(0.0, "rescale guided noise towards the conditional one's std (0-1)")
    seed: int | None = option(None, "seed of the first image; image i uses seed + i (default: random)")
    height: int | None = option(None, "image height in pixels (default: the model's, or the init image's)")
    width: int | None = option(None, "image width in pixels (default: the model's, or the init image's)")
    num_images_per_prompt: int = option(1, "images to generate", "--num-images", "-n")
    init_image: str | None = option(None, "start from this image (image-to-image)")
    strength: float | None = option(
        None, "how much of the init image to re-noise, (0, 1] (default 0.8; inpaint 1.0)"
    )
    mask_image: str | None = option(
        None, "inpainting mask, white = repaint, same size as the init image", "--mask"
    )
    eta: float = option(0.0, "DDIM's eta: 0 is deterministic, 1 is DDPM-like")
    output: str | None = option(
        None, "PNG to write; several images add -0, -1, ... and -grid (default: outputs/NNNNN.png)", "-o"
    )


@dataclass
class ReplayOptions(ModelOptions):
    image: str = option("", "a PNG made by sdlab (or carrying A1111 'parameters')", positional=True)
    output: str | None = option(
        None, "where to write the regenerated image (default: IMAGE-replay.png)", "-o"
    )


@dataclass
class ConvertOptions(ModelOptions):
    model: str | None = option(None, "the model to convert (diffusers folder or checkpoint)", positional=True)
    output: str = option(
        "", "a .safetensors file (A1111 layout) or a folder (diffusers layout)", positional=True
    )
    half: bool = option(False, "store float16 weights (half the size)")


@dataclass
class TrainBaseOptions:
    preset: str = option(
        "quick",
        "quick (sized for ~20 min on 2 CPU cores), full (the shipped model) or tiny (seconds)",
        choices=["quick", "full", "tiny"],
        metavar="NAME",
    )
    run_dir: str = option(
        "runs/digits", "folder for stages, checkpoints, loss logs and validation grids", metavar="PATH"
    )
    output: str | None = option(
        None, "where to write the final diffusers model (default: RUN_DIR/model)", "-o", metavar="PATH"
    )
    seed: int | None = option(None, "random seed (default: the preset's)")
    vae_steps: int | None = option(None, "VAE training steps (default: the preset's)")
    unet_steps: int | None = option(None, "UNet + text encoder training steps (default: the preset's)")
    batch_size: int | None = option(None, "batch size per process (default: the preset's)")
    mixed_precision: str | None = option(None, "no, fp16 or bf16 (accelerate's mixed precision)")
    resume: bool = option(False, "continue from the latest complete checkpoint in RUN_DIR")


@dataclass
class EvalOptions(ModelOptions):
    per_digit: int = option(50, "images generated per digit for accuracy, FID and diversity")
    scheduler: str | None = option(
        None, "sampler (default: the model's own)", choices=list(SCHEDULERS), metavar="NAME"
    )
    num_inference_steps: int = option(30, "denoising steps", "--steps")
    guidance_scale: float = option(7.5, "classifier-free guidance scale", "--cfg")
    output: str = option("eval", "folder for eval.json and eval.md", "-o")


@dataclass
class InfoOptions(ModelOptions):
    model: str | None = option(
        None, "diffusers folder or single-file .safetensors checkpoint", positional=True
    )
    json: bool = option(False, "print machine-readable JSON")


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one argument per dataclass field of `cls`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        aliases, positional = meta.pop("aliases"), meta.pop("positional")
        kind = _base_type(hints[f.name])
        if positional:
            parser.add_argument(f.name, type=kind, help=meta.pop("help"), **meta)
            continue
        flags = ["--" + f.name.replace("_", "-"), *aliases]
        if kind is bool:
            parser.add_argument(*flags, dest=f.name, action="store_true", help=meta.pop("help"))
        else:
            parser.add_argument(
                *flags,
                dest=f.name,
                type=kind,
                default=f.default,
                **{"metavar": "PATH" if f.name in PATHS else METAVARS.get(kind, "VALUE"), **meta},
            )


def from_namespace(cls: type, ns: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})


def _base_type(hint: Any) -> type:
    """`int | None` -> int."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint
