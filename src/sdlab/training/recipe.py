"""What the teaching recipes have in common: their options, the base model, the data, validation grids."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from sdlab.datasets import load_pixels, read_folder
from sdlab.images import make_grid, save_png
from sdlab.loading import load_pipeline
from sdlab.options import option
from sdlab.pipeline import Pipeline
from sdlab.training.data import LatentData, diffusion_loss, encode_text, noise_and_timesteps
from sdlab.training.loop import TrainConfig, TrainLoop


@dataclass
class RecipeConfig(TrainConfig):
    """What every teaching recipe takes, on top of the training loop's options."""

    data: str = option(
        "", "folder of training images (captions: metadata.jsonl or .txt sidecars)", positional=True
    )
    model: str | None = option(
        None, "base model: diffusers folder or .safetensors (default: the digits model)",
        "--pretrained-model-name-or-path",
    )  # fmt: skip
    resolution: int | None = option(None, "training image side in pixels (default: the model's)")
    allow_pickle: bool = option(False, "allow a pickle base model (loaded with weights_only)")
    cache_latents: bool = option(
        True, "encode the images with the VAE once, up front (--no-cache-latents: each batch)"
    )
    caption_dropout: float = option(0.0, "share of empty captions (keeps CFG's unconditional branch trained)")
    snr_gamma: float | None = option(None, "min-SNR loss weighting gamma (e.g. 5; default: plain MSE)")
    validation_steps: int = option(20, "sampling steps of the validation grids")


def load_base(cfg: RecipeConfig, device: torch.device) -> Pipeline:
    """The base model in float32 on the training device, every weight frozen (a recipe unfreezes its part)."""
    pipe = load_pipeline(cfg.model, device=device, dtype=torch.float32, allow_pickle=cfg.allow_pickle)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    return pipe


def training_noise_scheduler(pipe: Pipeline) -> DDPMScheduler:
    """The model's own noise schedule and prediction type, as the forward (noising) process."""
    return DDPMScheduler.from_config(pipe.scheduler_config)


def folder_data(
    folder: str | Path, pipe: Pipeline, *, cache: bool = True, size: int | None = None
) -> LatentData:
    """A captioned folder at `size` pixels (default: the model's), read and checked (every image opens)."""
    items = read_folder(folder)
    pixels = load_pixels(items, size or pipe.default_size)
    return LatentData(pixels, [item.caption for item in items], pipe.vae, cache=cache)


def save_validation(
    pipe: Pipeline, prompts: list[str], folder: Path, step: int, steps: int = 20
) -> Path | None:
    """A grid, one column per prompt, two seeds each: the run's progress at `step`."""
    if not prompts:
        return None
    was_training = pipe.unet.training, pipe.text_encoder.training
    pipe.unet.eval()
    pipe.text_encoder.eval()
    try:
        result = pipe.generate(prompts, num_inference_steps=steps, seed=0, num_images_per_prompt=2)
    finally:
        pipe.unet.train(was_training[0])
        pipe.text_encoder.train(was_training[1])
    images = [result.images[2 * p + k] for k in range(2) for p in range(len(prompts))]
    return save_png(make_grid(images, cols=len(prompts)), folder / "validation" / f"step-{step:06d}.png")


def caption_loss(
    loop: TrainLoop, cfg: RecipeConfig, data: LatentData, pipe: Pipeline, unet, text_encoder
) -> Callable[[int], torch.Tensor]:
    """The step loss of training on captioned images: draw the global batch, compute this process's share."""
    noise_scheduler = training_noise_scheduler(pipe)

    def compute_loss(step: int) -> torch.Tensor:
        latents, captions = data.sample(loop.rng, cfg.batch_size)
        captions = ["" if loop.rng.py.random() < cfg.caption_dropout else c for c in captions]
        noise, t = noise_and_timesteps(loop.rng, latents, noise_scheduler.config.num_train_timesteps)
        share = loop.share()
        embeds = encode_text(pipe.tokenizer, text_encoder, captions[share])
        loss = diffusion_loss(
            unet, noise_scheduler, latents[share], embeds, noise[share], t[share], cfg.snr_gamma
        )
        return loss.mean()

    return compute_loss
