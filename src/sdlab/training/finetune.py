"""`sdlab finetune DATA`: full fine-tuning of the UNet (and optionally the text encoder) on image-caption pairs.

The lesson notes' recipe: caption your images with a captioning model (`sdlab caption`), then continue
training Stable Diffusion on them with its own objective. EMA weights are what is saved.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel

from sdlab.loading.folder import save_folder
from sdlab.options import option
from sdlab.pipeline import Pipeline
from sdlab.training.loop import TrainLoop
from sdlab.training.recipe import (
    RecipeConfig,
    caption_objective,
    folder_data,
    load_base,
    save_validation,
    text_encoders,
)


@dataclass
class FinetuneConfig(RecipeConfig):
    train_text_encoder: bool = option(False, "train the text encoder too (both, on SDXL)")
    ema_decay: float = option(0.999, "EMA decay of the saved weights (0: save the raw weights)")
    half: bool = option(False, "store the result's weights in float16")


def finetune(cfg: FinetuneConfig) -> Path:
    """Train, then write the model (EMA weights) as a diffusers folder at OUTPUT/model."""
    loop = TrainLoop(cfg)
    pipe = load_base(cfg, loop.accelerator.device)
    data = folder_data(cfg.data, pipe, cache=cfg.cache_latents, size=cfg.resolution)
    modules = [pipe.unet] + (text_encoders(pipe) if cfg.train_text_encoder else [])
    for module in modules:
        module.requires_grad_(True).train()
    params = [p for m in modules for p in m.parameters()]
    emas = (
        [EMAModel(m.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, foreach=True) for m in modules]
        if cfg.ema_decay
        else []
    )
    unet, *encoders = loop.prepare(*modules, params=params, weight_decay=1e-2)
    loop.register(*emas)
    draw, loss = caption_objective(loop, cfg, data, pipe, unet, encoders or text_encoders(pipe))

    def after_step() -> None:
        for ema, module in zip(emas, modules, strict=False):  # no EMA: nothing to do
            ema.step(loop.accelerator.unwrap_model(module).parameters())

    def validate(step: int) -> None:
        save_validation(
            averaged(pipe, modules, emas), cfg.validation_prompts, loop.out, step, cfg.validation_steps
        )

    loop.run(draw, loss, after_step=after_step, validate=validate, desc="finetune")
    output = loop.out / "model"
    if loop.accelerator.is_main_process:
        save_folder(averaged(pipe, modules, emas), output, weights_dtype=torch.float16 if cfg.half else None)
    return output


def averaged(pipe: Pipeline, modules: list[torch.nn.Module], emas: list[EMAModel]) -> Pipeline:
    """A copy of `pipe` whose trained modules hold the EMA weights (the training weights stay as they are)."""
    if not emas:
        return pipe
    out = copy.copy(pipe)
    for module, ema in zip(modules, emas, strict=True):
        clone = copy.deepcopy(module).eval()
        ema.copy_to(clone.parameters())
        name = next(n for n in ("unet", "text_encoder", "text_encoder_2") if getattr(pipe, n) is module)
        setattr(out, name, clone)
    return out
