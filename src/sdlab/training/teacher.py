"""What the distillation recipes share: the teacher model and the images it is distilled on.

A distillation trains a small or fast student to copy a model (the teacher) on images like its own
training data. By default both recipes take the digits model and the 4,000 digits it was trained on,
captioned as its training captioned them (the shipped captioner's readings, each style word kept with
probability 0.7); `DATA` gives a folder of images instead (captioned, where the recipe needs captions).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sdlab.errors import InputError
from sdlab.options import option
from sdlab.pipeline import Pipeline
from sdlab.training.loop import TrainConfig

ATTRIBUTE_KEEP = 0.7  # as the digits model's training captions (train-base --attribute-keep)


@dataclass
class TeacherConfig(TrainConfig):
    """The teacher and the data: options every distillation recipe takes."""

    data: str | None = option(
        None,
        "folder of images (default: the digits model's 4,000 training digits)",
        positional=True,
        nargs="?",
    )
    model: str | None = option(
        None, "the teacher: diffusers folder or .safetensors (default: the digits model)",
        "--pretrained-model-name-or-path",
    )  # fmt: skip
    resolution: int | None = option(None, "training image side in pixels (default: the model's)")
    allow_pickle: bool = option(False, "allow a pickle teacher (loaded with weights_only)")


def load_teacher(cfg: TeacherConfig, device: torch.device) -> Pipeline:
    """The teacher in float32 on `device`, every weight frozen, in eval mode."""
    from sdlab.loading import load_pipeline

    pipe = load_pipeline(cfg.model, device=device, dtype=torch.float32, allow_pickle=cfg.allow_pickle)
    if pipe.is_sdxl:
        raise InputError(f"{cfg.model} is an {pipe.family} model; sdlab distils SD 1.x/2.x models so far")
    for module in pipe.modules():
        module.requires_grad_(False).eval()
    return pipe


def training_images(
    cfg: TeacherConfig, pipe: Pipeline, *, captions: bool = False
) -> tuple[torch.Tensor, list[Callable[[random.Random], str]]]:
    """(pixels (N, 3, H, W) float32 in [-1, 1], a caption maker per image: `maker(rng)` -> str).

    From `cfg.data` (captions required only with `captions`), else the digits model's training digits.
    Raises `InputError` when neither is available (no data folder and a model other than the digits)."""
    if cfg.data:
        from sdlab.datasets import load_pixels, read_folder

        items = read_folder(cfg.data, require_captions=captions)
        fixed = [functools.partial(_fixed, item.caption or "") for item in items]
        return load_pixels(items, cfg.resolution or pipe.default_size), fixed
    captioner = Path(pipe.source) / "captioner.safetensors"
    if not captioner.is_file():
        raise InputError("give a folder of images to distill on (only the digits model has default data)")
    from sdlab.digits.captioner import DigitsCaptioner
    from sdlab.digits.data import to_pixels, train_test_split

    train, _ = train_test_split()
    facts = DigitsCaptioner.load(captioner).facts(train.images) if captions else []
    makers = [functools.partial(f.caption, keep=ATTRIBUTE_KEEP) for f in facts]
    return to_pixels(train.images), makers


def _fixed(caption: str, rng: random.Random) -> str:
    return caption
