"""`sdlab dreambooth INSTANCE_DIR --instance-prompt "a sks digit"`: bind a subject to a rare token.

Ruiz et al. 2022: fine-tune on a few images of one subject, all captioned with the same prompt that
pairs a rare token ("sks") with the subject's class, deliberately overfitting. Prior preservation
keeps the class word from drifting to the subject: the base model itself generates images of the
class prompt before training, and every step adds their loss, weighted by W:

    loss = MSE(instance) + W * MSE(class images)

Class images are cached in a folder (with a metadata.jsonl naming their prompt): reused when present,
topped up when too few. The fine-tune is full (a diffusers folder) or, with --lora, a LoRA file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState

from sdlab.datasets import METADATA, read_folder, write_metadata
from sdlab.errors import InputError
from sdlab.images import save_png
from sdlab.loading.folder import save_folder
from sdlab.lora import save_lora
from sdlab.options import option
from sdlab.pipeline import Pipeline
from sdlab.training.data import CaptionEncoder
from sdlab.training.loop import TrainLoop
from sdlab.training.lora import add_lora_adapters, trainable_parameters
from sdlab.training.recipe import (
    CaptionBatch,
    RecipeConfig,
    draw_captioned,
    latent_data,
    load_base,
    rows_loss,
    save_validation,
    text_encoders,
    training_noise_scheduler,
)


@dataclass
class DreamBoothConfig(RecipeConfig):
    instance_prompt: str = option("a sks digit", "the prompt of every instance image, e.g. 'a sks digit'")
    class_prompt: str = option("", "the subject's class, e.g. 'a handwritten digit' (for prior preservation)")
    prior_preservation: bool = option(
        False, "add the loss on class images the base model generates", "--with-prior-preservation"
    )
    num_class_images: int = option(100, "class images to generate (reused from --class-dir when present)")
    prior_loss_weight: float = option(1.0, "weight W of the prior loss")
    class_dir: str | None = option(
        None, "folder of class images (default: OUTPUT/class_images)", "--class-data-dir", metavar="DIR"
    )
    train_text_encoder: bool = option(False, "train the text encoder too (both, on SDXL)")
    lora: bool = option(False, "train LoRA adapters instead of the full UNet")
    rank: int = option(4, "LoRA rank (with --lora)")
    learning_rate: float = option(5e-5, "learning rate (a few images: a small step keeps the model)", "--lr")


def dreambooth(cfg: DreamBoothConfig) -> Path:
    """Train; write OUTPUT/model (full) or OUTPUT/pytorch_lora_weights.safetensors (--lora)."""
    if cfg.prior_preservation and not cfg.class_prompt:
        raise InputError("--prior-preservation needs --class-prompt, e.g. 'a handwritten digit'")
    if not cfg.instance_prompt.strip():
        raise InputError("--instance-prompt must name the subject, e.g. 'a sks digit'")
    loop = TrainLoop(cfg)
    pipe = load_base(cfg, loop.accelerator.device)
    items = read_folder(cfg.data, require_captions=False)
    size, cache = cfg.resolution, cfg.cache_latents
    instance = latent_data(pipe, items, [cfg.instance_prompt] * len(items), cache=cache, size=size)
    prior = None
    if cfg.prior_preservation:
        class_dir = Path(cfg.class_dir or loop.out / "class_images")
        class_items = class_images(pipe, cfg.class_prompt, class_dir, cfg.num_class_images, cfg.seed)
        prior = latent_data(pipe, class_items, [cfg.class_prompt] * len(class_items), cache=cache, size=size)

    if cfg.lora:
        modules = add_lora_adapters(pipe, cfg.rank, cfg.train_text_encoder, cfg.seed)
        params = trainable_parameters(modules)
    else:
        modules = [pipe.unet] + (text_encoders(pipe) if cfg.train_text_encoder else [])
        for module in modules:
            module.requires_grad_(True).train()
        params = [p for m in modules for p in m.parameters()]
    unet, *encoders = loop.prepare(*modules, params=params, weight_decay=1e-2)
    noise_scheduler = training_noise_scheduler(pipe)
    timesteps = noise_scheduler.config.num_train_timesteps
    encode = CaptionEncoder(pipe, encoders or text_encoders(pipe), cfg.resolution)

    def draw(step: int) -> tuple[CaptionBatch, CaptionBatch | None]:
        batch = draw_captioned(loop, instance, timesteps)
        return batch, (draw_captioned(loop, prior, timesteps) if prior is not None else None)

    def loss(batches: tuple[CaptionBatch, CaptionBatch | None], rows: slice) -> torch.Tensor:
        batch, prior_batch = batches
        value = rows_loss(batch, rows, unet, noise_scheduler, encode, cfg.snr_gamma)
        if prior_batch is not None:  # prior preservation (Ruiz et al. 2023, eq. 2)
            prior_loss = rows_loss(prior_batch, rows, unet, noise_scheduler, encode, cfg.snr_gamma)
            value = value + cfg.prior_loss_weight * prior_loss
        return value

    def validate(step: int) -> None:
        prompts = cfg.validation_prompts or [cfg.instance_prompt] + (
            [cfg.class_prompt] if cfg.class_prompt else []
        )
        save_validation(pipe, prompts, loop.out, step, cfg.validation_steps)

    loop.run(draw, loss, validate=validate, desc="dreambooth")
    if cfg.lora:
        out = loop.out / "pytorch_lora_weights.safetensors"
        if loop.accelerator.is_main_process:
            save_lora(loop.out, pipe, text_encoders=cfg.train_text_encoder)
        return out
    out = loop.out / "model"
    if loop.accelerator.is_main_process:
        for module in modules:
            module.eval()
        save_folder(pipe, out)
    return out


def class_images(pipe: Pipeline, prompt: str, folder: Path, n: int, seed: int = 0, batch: int = 50) -> list:
    """`n` images of `prompt` by the base model in `folder`: those already there (same prompt) are reused.

    The missing ones are made in batches of `batch` seeds; under `accelerate launch` the batches are split
    across processes (accelerate's `split_between_processes`, as `sdlab generate --from-file` splits its
    lines), so each image is the one a single process would make."""
    state = PartialState()
    state.wait_for_everyone()  # every process sees the folder as it was before any of them writes
    folder.mkdir(parents=True, exist_ok=True)
    have = []
    if (folder / METADATA).exists():
        have = [item for item in read_folder(folder, require_captions=False) if item.caption == prompt]
    missing = n - len(have)
    if missing > 0:
        start = len(list(folder.glob("class-*.png")))
        seeds = [seed + start + i for i in range(missing)]
        batches = [seeds[i : i + batch] for i in range(0, missing, batch)]
        with state.split_between_processes(batches) as mine:
            for chunk in mine:
                result = pipe.generate([prompt] * len(chunk), seed=chunk)
                for s, image in zip(chunk, result.images, strict=True):
                    save_png(image, folder / f"class-{s:06d}.png")
        state.wait_for_everyone()
        if state.is_main_process:
            captions = {
                item.path: item.caption
                for item in read_folder(folder, require_captions=False)
                if item.caption
            }
            captions.update({p: prompt for p in folder.glob("class-*.png") if p not in captions})
            write_metadata(folder, captions)
        state.wait_for_everyone()
        have = [item for item in read_folder(folder) if item.caption == prompt]
    return have[:n]
