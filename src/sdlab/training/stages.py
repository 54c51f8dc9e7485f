"""The digits model's trained stages, each on the one training loop (`TrainLoop`): the VAE, the text
encoder's contrastive head start, and the UNet with the text encoder. `sdlab.training.base` runs them
in order, each in RUN_DIR/stages/NAME/; each takes its loop, the whole `BaseTrainConfig` and its inputs.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler
from diffusers.training_utils import EMAModel
from transformers import CLIPTextModel

from sdlab.atomic import atomic_path
from sdlab.digits.architecture import SCHEDULER_CONFIG
from sdlab.digits.attributes import measure
from sdlab.digits.classifier import DigitClassifier
from sdlab.digits.data import to_gray
from sdlab.images import make_grid, save_png
from sdlab.loading.tokenizer import clip_tokenizer
from sdlab.pipeline import Pipeline
from sdlab.sampling.conditioning import Conditioning
from sdlab.training.checkpoints import Stream
from sdlab.training.contrastive import contrastive_pretrain
from sdlab.training.data import CaptionTokens, diffusion_loss, encode_text
from sdlab.training.loop import TrainLoop, append_csv, truncate_csv

if TYPE_CHECKING:
    from sdlab.training.base import BaseTrainConfig


class VAETraining(torch.nn.Module):
    """The VAE's training forward: reconstruction and KL of a batch, given the posterior's noise."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * eps  # = posterior.sample(), with the noise drawn up front
        return self.vae.decode(z).sample, posterior.kl()


def train_vae(cfg: BaseTrainConfig, loop: TrainLoop, pixels: torch.Tensor, out: Path) -> None:
    """Stage 2: AutoencoderKL on `pixels` (N, 3, H, W in [-1, 1]), MSE + `kl_weight` x KL; saved to `out`."""
    torch.manual_seed(cfg.seed)
    vae = cfg.architecture.vae()
    # the posterior's noise continues torch's global stream after the initialisation, as the shipped model
    # drew it, in a generator of its own that every checkpoint saves
    posterior_noise = Stream(torch.get_rng_state())
    loop.register(posterior_noise)
    (model,) = loop.prepare(VAETraining(vae), params=list(vae.parameters()), weight_decay=0.0)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    side = cfg.architecture.image_size // factor

    def draw(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = pixels[torch.randint(len(pixels), (cfg.batch_size,), generator=loop.rng.torch)]
        eps = torch.randn(
            cfg.batch_size, vae.config.latent_channels, side, side, generator=posterior_noise.generator
        )
        return x, eps

    def loss(batch: tuple[torch.Tensor, torch.Tensor], rows: slice) -> torch.Tensor:
        x, eps = (v[rows].to(loop.accelerator.device) for v in batch)
        recon, kl = model(x, eps)
        return torch.nn.functional.mse_loss(recon, x) + cfg.kl_weight * kl.mean()

    loop.run(draw, loss, desc="vae")
    if loop.accelerator.is_main_process:
        with atomic_path(out) as tmp:
            vae.save_pretrained(tmp)
    loop.accelerator.wait_for_everyone()


def digit_features(captioner_file: Path, images: np.ndarray) -> torch.Tensor:
    """What the contrastive stage matches captions to: the captioner's features and the measured style."""
    gray = torch.as_tensor(images, dtype=torch.float32) / 255
    style = measure(gray.numpy())
    measured = torch.tensor(np.stack([style.thickness, style.slant, style.size], axis=1), dtype=torch.float32)
    return torch.cat([DigitClassifier.load(captioner_file).features_of(gray), measured], dim=1)


def pretrain_text_encoder(
    cfg: BaseTrainConfig, loop: TrainLoop, captions: list, image_features: torch.Tensor, out: Path
) -> None:
    """Stage 4: CLIP's contrastive objective (training/contrastive.py) at twice the batch, one-cycle LR."""
    torch.manual_seed(cfg.seed)
    text_encoder = contrastive_pretrain(
        loop, cfg.architecture.text_encoder(), clip_tokenizer(), captions, image_features
    )
    if loop.accelerator.is_main_process:
        with atomic_path(out) as tmp:
            text_encoder.save_pretrained(tmp)
    loop.accelerator.wait_for_everyone()


def train_unet(
    cfg: BaseTrainConfig,
    loop: TrainLoop,
    vae: AutoencoderKL,
    mean: torch.Tensor,
    std: torch.Tensor,
    captions: list[Callable[[random.Random], str]],
    validation_prompts: list[str],
    run: Path,
    *,
    text_encoder: CLIPTextModel | None = None,
) -> Pipeline:
    """Stage 5: UNet and text encoder on the noise-prediction loss, EMA of both; returns the EMA pipeline."""
    torch.manual_seed(cfg.seed)
    unet = cfg.architecture.unet()
    text_encoder = text_encoder if text_encoder is not None else cfg.architecture.text_encoder()
    tokenizer = clip_tokenizer()
    tokens = CaptionTokens(tokenizer)
    noise_scheduler = DDPMScheduler.from_config(SCHEDULER_CONFIG)
    ema_unet = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, foreach=True)
    ema_text = EMAModel(text_encoder.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, foreach=True)
    unet.train()
    text_encoder.train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    unet_p, text_p = loop.prepare(unet, text_encoder, params=params, weight_decay=1e-2)
    loop.register(ema_unet, ema_text)
    scale = vae.config.scaling_factor
    rng = loop.rng

    def draw(step: int) -> tuple[torch.Tensor, list[str], torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(mean), (cfg.batch_size,), generator=rng.torch)
        latents = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=rng.torch)) * scale
        texts = ["" if rng.py.random() < cfg.caption_dropout else captions[i](rng.py) for i in idx.tolist()]
        noise = torch.randn(latents.shape, generator=rng.torch)
        t = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=rng.torch
        )
        return latents, texts, noise, t

    def loss(batch, rows: slice) -> torch.Tensor:
        latents, texts, noise, t = batch
        cond = Conditioning(encode_text(tokens, text_p, texts[rows]))
        return diffusion_loss(
            unet_p, noise_scheduler, latents[rows], cond, noise[rows], t[rows], cfg.snr_gamma
        ).mean()

    def after_step() -> None:
        ema_unet.step(unet.parameters())
        ema_text.step(text_encoder.parameters())

    def validate(step: int) -> None:
        _validate(
            _ema_pipeline(unet, text_encoder, ema_unet, ema_text, vae, tokenizer),
            run,
            step,
            validation_prompts,
        )

    loop.run(draw, loss, after_step=after_step, validate=validate, desc="unet")
    return _ema_pipeline(unet, text_encoder, ema_unet, ema_text, vae, tokenizer)


def _ema_pipeline(unet, text_encoder, ema_unet, ema_text, vae, tokenizer) -> Pipeline:
    """A standalone Pipeline holding copies of the EMA weights (training weights untouched)."""
    u = copy.deepcopy(unet).eval()
    te = copy.deepcopy(text_encoder).eval()
    ema_unet.copy_to(u.parameters())
    ema_text.copy_to(te.parameters())
    return Pipeline(
        unet=u,
        vae=vae.to(u.device),
        text_encoder=te,
        tokenizer=tokenizer,
        scheduler_config=dict(SCHEDULER_CONFIG),
        name="digits",
    )


def _validate(pipe: Pipeline, run: Path, step: int, prompts: list[str]) -> None:
    """A grid of the validation prompts; for the digits, how many the captioner reads as the prompted digit."""
    result = pipe.generate(
        prompts, num_inference_steps=20, guidance_scale=4.0, seed=0, num_images_per_prompt=2
    )
    save_png(make_grid(result.images, cols=len(prompts)), run / "validation" / f"step-{step:06d}.png")
    captioner = run / "captioner.safetensors"
    if not captioner.exists():
        return
    clf = DigitClassifier.load(captioner)
    wanted = torch.arange(10).repeat_interleave(2)
    hits = (clf.predict(to_gray(result.pixels)) == wanted).float().mean()
    print(f"\nstep {step}: validation prompt accuracy {hits:.2f}")
    truncate_csv(run / "validation.csv", step - 1)  # a resumed run validates this step again
    append_csv(run / "validation.csv", {"step": step, "prompt_accuracy": float(hits)})
