"""What every teaching recipe trains on: images as VAE latents with their captions, and the diffusion loss.

The objective is Stable Diffusion's own: noise a latent to a random timestep, ask the UNet for the
noise (or the velocity, for v-prediction models) given the caption's embeddings, and take the mean
squared error, optionally weighted by min-SNR (Hang et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_snr

from sdlab.training.checkpoints import RandomState


@dataclass
class LatentData:
    """Images (N, 3, H, W in [-1, 1]) with captions; latents sampled from the VAE posterior on demand.

    With `cache` the posterior mean and std are computed once (the VAE is frozen, so this is exact);
    without it every batch is encoded afresh. Both draw the same sample for the same random stream.
    """

    pixels: torch.Tensor
    captions: list[str]
    vae: AutoencoderKL
    cache: bool = True

    def __post_init__(self) -> None:
        self._mean = self._std = None
        if self.cache:
            self._mean, self._std = self._posterior(torch.arange(len(self.pixels)))

    def __len__(self) -> int:
        return len(self.pixels)

    @torch.no_grad()
    def _posterior(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        means, stds = [], []
        for chunk in idx.split(64):
            dist = self.vae.encode(self.pixels[chunk].to(self.vae.device, self.vae.dtype)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        return torch.cat(means), torch.cat(stds)

    def sample(self, rng: RandomState, n: int) -> tuple[torch.Tensor, list[str]]:
        """A global batch of n scaled latents and their captions, drawn from `rng`."""
        idx = torch.randint(len(self.pixels), (n,), generator=rng.torch)
        mean, std = (self._mean[idx], self._std[idx]) if self.cache else self._posterior(idx)
        z = mean + std * torch.randn(mean.shape, generator=rng.torch).to(mean.device)
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (z - shift) * self.vae.config.scaling_factor, [self.captions[i] for i in idx.tolist()]


class CaptionTokens:
    """Captions as CLIP token ids (B, 77) int64, each distinct caption tokenized once: a training run draws
    the same captions thousands of times, and tokenizing them on every step cost the digits UNet stage on
    a GPU as much time as its EMA update (issue 23's profile)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._ids: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        new = [c for c in dict.fromkeys(captions) if c not in self._ids]
        if new:
            ids = self.tokenizer(
                new, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                return_tensors="pt",
            ).input_ids  # fmt: skip
            self._ids.update(zip(new, ids, strict=True))
        return torch.stack([self._ids[c] for c in captions])


def encode_text(tokens: CaptionTokens, text_encoder, captions: list[str]) -> torch.Tensor:
    """Plain CLIP encoding as diffusers' training scripts do it: no emphasis syntax, 77 tokens."""
    device = next(text_encoder.parameters()).device  # `text_encoder` may be wrapped for several processes
    return text_encoder(tokens(captions).to(device, non_blocking=True))[0]


def noise_and_timesteps(
    rng: RandomState, latents: torch.Tensor, num_train_timesteps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    noise = torch.randn(latents.shape, generator=rng.torch)
    t = torch.randint(0, num_train_timesteps, (latents.shape[0],), generator=rng.torch)
    return noise, t


def diffusion_loss(
    unet: UNet2DConditionModel,
    noise_scheduler: DDPMScheduler,
    latents: torch.Tensor,
    embeds: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """Per-sample loss (B,) of predicting the noise (or velocity) added to `latents` at `timesteps`."""
    device = embeds.device
    latents, noise, timesteps = latents.to(device), noise.to(device), timesteps.to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    pred = unet(noisy.to(embeds.dtype), timesteps, encoder_hidden_states=embeds).sample
    loss = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma:
        snr = compute_snr(noise_scheduler, timesteps)
        clamped = torch.clamp(snr, max=snr_gamma)
        loss = loss * clamped / (snr + 1 if noise_scheduler.config.prediction_type == "v_prediction" else snr)
    return loss


@torch.no_grad()
def encode_dataset(
    vae: AutoencoderKL, pixels: torch.Tensor, batch: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's posterior mean and std (unscaled latents, on the CPU) of `pixels` (N, 3, H, W in [-1, 1]).

    `batch` images per VAE call; by default as many as hold 256 digits' pixels (256 at 32x32, 1 at 512x512,
    where the VAE's first activation alone is ~130 MB an image)."""
    if batch is None:
        batch = max(1, min(256, 256 * 32 * 32 // (pixels.shape[-1] * pixels.shape[-2])))
    means, stds = [], []
    for i in range(0, len(pixels), batch):
        dist = vae.encode(pixels[i : i + batch].to(vae.device)).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    return torch.cat(means), torch.cat(stds)
