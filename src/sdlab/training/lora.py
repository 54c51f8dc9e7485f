"""`sdlab lora DATA`: fine-tuning through low-rank adapters (Hu et al. 2021) made by peft.

The base weights stay frozen; rank-r matrices beside the UNet's attention projections (and optionally
the text encoders', both of SDXL's) learn the change. The result is a small file that diffusers'
`load_lora_weights` and `sdlab generate --lora FILE[:WEIGHT]` load onto the unchanged base model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.training_utils import cast_training_params
from peft import LoraConfig

from sdlab.lora import TEXT_TARGETS, UNET_TARGETS, add_text_encoder_adapter, save_lora
from sdlab.options import option
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
class LoraTrainConfig(RecipeConfig):
    rank: int = option(4, "LoRA rank")
    train_text_encoder: bool = option(False, "also put adapters on the text encoder (both, on SDXL)")
    learning_rate: float = option(
        1e-3, "learning rate (LoRA layers start at zero: higher than full fine-tuning's)", "--lr"
    )


def add_lora_adapters(pipe, rank: int, text_encoder: bool, seed: int = 0) -> list[torch.nn.Module]:
    """Attach fresh LoRA adapters (alpha = rank, as diffusers' scripts) and return the modules that carry
    them: the UNet, then with `text_encoder` each text encoder (SDXL's two, as `train_dreambooth_lora_sdxl.py`).

    A starts Gaussian, B at zero (Hu et al. 2021); A is drawn from `seed`, so a run's `--seed` fixes it
    (torch's global stream is left as it was)."""
    config = dict(r=rank, lora_alpha=rank, init_lora_weights="gaussian")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe.unet.add_adapter(LoraConfig(**config, target_modules=UNET_TARGETS))
        modules = [pipe.unet]
        if text_encoder:
            for encoder in text_encoders(pipe):
                add_text_encoder_adapter(encoder, LoraConfig(**config, target_modules=TEXT_TARGETS))
                modules.append(encoder)
    for module in modules:
        cast_training_params(module, dtype=torch.float32)
        module.train()
    return modules


def trainable_parameters(modules: list[torch.nn.Module]) -> list[torch.nn.Parameter]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]


def lora(cfg: LoraTrainConfig) -> Path:
    """Train; write OUTPUT/pytorch_lora_weights.safetensors."""
    loop = TrainLoop(cfg)
    pipe = load_base(cfg, loop.accelerator.device)
    data = folder_data(cfg.data, pipe, cache=cfg.cache_latents, size=cfg.resolution)
    modules = add_lora_adapters(pipe, cfg.rank, cfg.train_text_encoder, cfg.seed)
    unet, *encoders = loop.prepare(*modules, params=trainable_parameters(modules), weight_decay=1e-2)
    draw, loss = caption_objective(loop, cfg, data, pipe, unet, encoders or text_encoders(pipe))

    def validate(step: int) -> None:
        save_validation(pipe, cfg.validation_prompts, loop.out, step, cfg.validation_steps)

    loop.run(draw, loss, validate=validate, desc="lora")
    out = loop.out / "pytorch_lora_weights.safetensors"
    if loop.accelerator.is_main_process:
        save_lora(loop.out, pipe, text_encoders=cfg.train_text_encoder)
    return out
