"""Training: recipes (one module each) on one loop (`loop.TrainLoop`), sharing small pieces (data, checkpoints).

A recipe is a config dataclass (its options, each described once with `sdlab.options.option`; the CLI
subcommand is generated from it) and a function of that config. Adding one: write its module, add a
line to `RECIPES`, test it. `sdlab <command> --help` then lists its flags.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Recipe:
    command: str  # the CLI subcommand
    module: str  # where its config and function live
    config: str  # the config dataclass's name
    function: str  # the function of that config that trains and returns the result's path
    help: str
    presets: str | None = None  # name of a dict of presets in the module (the first is the CLI's default)

    def load(self) -> tuple[type, Callable[..., Path]]:
        module = importlib.import_module(self.module)
        return getattr(module, self.config), getattr(module, self.function)

    def load_presets(self) -> dict[str, dict] | None:
        return getattr(importlib.import_module(self.module), self.presets) if self.presets else None


RECIPES = [
    Recipe("train-base", "sdlab.training.base", "BaseTrainConfig", "train_base",
           "train the digits Stable Diffusion from scratch", presets="PRESETS"),
    Recipe("finetune", "sdlab.training.finetune", "FinetuneConfig", "finetune",
           "fine-tune the UNet (and text encoder) on captioned images"),
    Recipe("lora", "sdlab.training.lora", "LoraTrainConfig", "lora", "train a LoRA on captioned images"),
    Recipe("textual-inversion", "sdlab.training.textual_inversion", "TextualInversionConfig", "textual_inversion",
           "teach the text encoder one new word from a few images"),
    Recipe("dreambooth", "sdlab.training.dreambooth", "DreamBoothConfig", "dreambooth",
           "bind a subject to a rare token, with prior preservation"),
    Recipe("distill-decoder", "sdlab.training.tiny_decoder", "DecoderDistillConfig", "distill_decoder",
           "distill a tiny decoder (AutoencoderTiny, TAESD's architecture) from the model's VAE"),
    Recipe("distill", "sdlab.training.lcm", "LCMDistillConfig", "distill",
           "latent consistency distillation: a 1-4-step LCM variant of the model"),
]  # fmt: skip
