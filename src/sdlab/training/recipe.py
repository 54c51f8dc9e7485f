"""What the teaching recipes have in common: their options, the base model, the data, validation grids."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from sdlab.datasets import CaptionedImage, crop_geometry, load_pixels, read_folder
from sdlab.errors import InputError
from sdlab.images import make_grid, save_png
from sdlab.loading import load_pipeline
from sdlab.options import option
from sdlab.pipeline import Pipeline
from sdlab.training.data import CaptionEncoder, LatentData, diffusion_loss, noise_and_timesteps
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
    """The base model in float32 on the training device, every weight frozen (a recipe unfreezes its part).

    SD 1.x, 2.x and SDXL base models train (SDXL's VAE in float32, as diffusers' SDXL scripts keep it).
    `InputError` for the SDXL refiner: it is conditioned on an aesthetic score that captioned images do
    not have, and diffusers has no recipe for it either."""
    pipe = load_pipeline(cfg.model, device=device, dtype=torch.float32, allow_pickle=cfg.allow_pickle)
    if pipe.requires_aesthetics_score:
        raise InputError(
            f"{cfg.model} is an SDXL refiner, conditioned on aesthetic scores the training images do not have; "
            "train the SDXL base model instead"
        )
    for module in pipe.modules():
        module.requires_grad_(False)
    return pipe


def text_encoders(pipe: Pipeline) -> list[torch.nn.Module]:
    """The model's text encoders, in the order of its conditioning: one, or SDXL's two."""
    return [encoder for _, encoder in pipe.text_encoders]


def training_noise_scheduler(pipe: Pipeline) -> DDPMScheduler:
    """The model's own noise schedule and prediction type, as the forward (noising) process."""
    return DDPMScheduler.from_config(pipe.scheduler_config)


def folder_data(
    folder: str | Path, pipe: Pipeline, *, cache: bool = True, size: int | None = None
) -> LatentData:
    """A captioned folder at `size` pixels (default: the model's), read and checked (every image opens)."""
    items = read_folder(folder)
    return latent_data(pipe, items, [item.caption for item in items], cache=cache, size=size)


def latent_data(
    pipe: Pipeline,
    items: list[CaptionedImage],
    captions: list[str],
    *,
    cache: bool = True,
    size: int | None = None,
) -> LatentData:
    """`items` at `size` pixels (default: the model's) with `captions`; for SDXL with their crop geometry."""
    size = size or pipe.default_size
    geometry = crop_geometry(items, size) if pipe.is_sdxl else None
    return LatentData(load_pixels(items, size), captions, pipe.vae, cache=cache, geometry=geometry)


def save_validation(
    pipe: Pipeline, prompts: list[str], folder: Path, step: int, steps: int = 20
) -> Path | None:
    """A grid, one column per prompt, two seeds each: the run's progress at `step`."""
    if not prompts:
        return None
    modules = [pipe.unet, *text_encoders(pipe)]
    was_training = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        # the UNet whole at every step: a recommended deep cache was measured on the base weights only
        result = pipe.generate(
            prompts, num_inference_steps=steps, seed=0, num_images_per_prompt=2, deep_cache=1
        )
    finally:
        for module, mode in zip(modules, was_training, strict=True):
            module.train(mode)
    images = [result.images[2 * p + k] for k in range(2) for p in range(len(prompts))]
    return save_png(make_grid(images, cols=len(prompts)), folder / "validation" / f"step-{step:06d}.png")


@dataclass
class CaptionBatch:
    """A global batch of captioned latents with the noise and timesteps that train on them."""

    latents: torch.Tensor  # (B, C, h, w), scaled
    captions: list[str]
    noise: torch.Tensor  # like latents
    timesteps: torch.Tensor  # (B,) int64
    geometry: torch.Tensor | None = None  # (B, 4) original size and crop corner, for SDXL


def draw_captioned(loop: TrainLoop, data: LatentData, num_train_timesteps: int, dropout: float = 0.0,
                   template: Callable[[str], str] | None = None) -> CaptionBatch:  # fmt: skip
    """The step's global batch from `loop.rng`: latents, captions (`template` applied, then `dropout`
    share emptied), noise and timesteps."""
    latents, captions, geometry = data.sample(loop.rng, loop.cfg.batch_size)
    if template is not None:
        captions = [template(c) for c in captions]
    captions = ["" if dropout and loop.rng.py.random() < dropout else c for c in captions]
    noise, t = noise_and_timesteps(loop.rng, latents, num_train_timesteps)
    return CaptionBatch(latents, captions, noise, t, geometry)


def rows_loss(
    batch: CaptionBatch, rows: slice, unet, noise_scheduler: DDPMScheduler, encode: CaptionEncoder,
    snr_gamma: float | None = None,
) -> torch.Tensor:  # fmt: skip
    """The mean diffusion loss of `rows` of `batch` (a scalar)."""
    geometry = None if batch.geometry is None else batch.geometry[rows]
    cond = encode(batch.captions[rows], geometry)
    return diffusion_loss(
        unet, noise_scheduler, batch.latents[rows], cond, batch.noise[rows], batch.timesteps[rows], snr_gamma
    ).mean()


def caption_objective(
    loop: TrainLoop, cfg: RecipeConfig, data: LatentData, pipe: Pipeline, unet, encoders: list
) -> tuple[Callable[[int], CaptionBatch], Callable[[CaptionBatch, slice], torch.Tensor]]:
    """`TrainLoop.run`'s (draw, loss) for training on captioned images; `encoders` are the text encoders
    in use (prepared where they train)."""
    noise_scheduler = training_noise_scheduler(pipe)
    timesteps = noise_scheduler.config.num_train_timesteps
    encode = CaptionEncoder(pipe, encoders, cfg.resolution)

    def draw(step: int) -> CaptionBatch:
        return draw_captioned(loop, data, timesteps, cfg.caption_dropout)

    def loss(batch: CaptionBatch, rows: slice) -> torch.Tensor:
        return rows_loss(batch, rows, unet, noise_scheduler, encode, cfg.snr_gamma)

    return draw, loss
