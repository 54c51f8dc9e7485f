"""`sdlab caption`, `finetune`, `lora`, `textual-inversion`, `dreambooth`: the teaching commands."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sdlab.cli.options import (
    CaptionOptions,
    DreamBoothOptions,
    FinetuneOptions,
    LoraOptions,
    TeachOptions,
    TextualInversionOptions,
)


def run_caption(opts: CaptionOptions) -> dict:
    from sdlab.captioning import caption_folder, describe, load_captioner

    captioner = load_captioner(opts.captioner, allow_pickle=opts.allow_pickle)
    captions = caption_folder(opts.folder, captioner, sidecars=opts.sidecars, overwrite=opts.overwrite)
    print(describe(captions))
    print(f"{len(captions)} captions written to {Path(opts.folder) / 'metadata.jsonl'}")
    return captions


def recipe_config(cls: type, opts: TeachOptions):
    """The recipe's config dataclass from the command's options (same names, plus a few translations)."""
    values = dataclasses.asdict(opts)
    values["cache_latents"] = not values.pop("no_cache_latents")
    prompts = values.pop("validation_prompt")
    values["validation_prompts"] = [p.strip() for p in prompts.split("|") if p.strip()] if prompts else []
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def run_finetune(opts: FinetuneOptions) -> Path:
    from sdlab.training.finetune import FinetuneConfig, finetune

    return _done(finetune(recipe_config(FinetuneConfig, opts)))


def run_lora(opts: LoraOptions) -> Path:
    from sdlab.training.lora import LoraTrainConfig, lora

    return _done(lora(recipe_config(LoraTrainConfig, opts)))


def run_textual_inversion(opts: TextualInversionOptions) -> Path:
    from sdlab.training.textual_inversion import TextualInversionConfig, textual_inversion

    return _done(textual_inversion(recipe_config(TextualInversionConfig, opts)))


def run_dreambooth(opts: DreamBoothOptions) -> Path:
    from sdlab.training.dreambooth import DreamBoothConfig, dreambooth

    return _done(dreambooth(recipe_config(DreamBoothConfig, opts)))


def _done(path: Path) -> Path:
    print(path)
    return path
