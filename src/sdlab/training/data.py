"""What every teaching recipe trains on: images as VAE latents with their captions, and the diffusion loss.

The objective is Stable Diffusion's own: noise a latent to a random timestep, ask the UNet for the
noise (or the velocity, for v-prediction models) given the caption's conditioning, and take the mean
squared error, optionally weighted by min-SNR (Hang et al. 2023). For SDXL the conditioning is both
text encoders' penultimate layers, the second's pooled embedding and each image's size ids, as
diffusers' `train_dreambooth_lora_sdxl.py` builds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_snr

from sdlab.sampling.conditioning import Conditioning
from sdlab.training.checkpoints import RandomState

if TYPE_CHECKING:
    from sdlab.pipeline import Pipeline


@dataclass
class LatentData:
    """Images (N, 3, H, W in [-1, 1]) with captions; latents sampled from the VAE posterior on demand.

    With `cache` the posterior mean and std are computed once (the VAE is frozen, so this is exact);
    without it every batch is encoded afresh. Both draw the same sample for the same random stream.
    `geometry` (N, 4): each image's original size and crop corner (`datasets.crop_geometry`), for SDXL.
    """

    pixels: torch.Tensor
    captions: list[str]
    vae: AutoencoderKL
    cache: bool = True
    geometry: torch.Tensor | None = None

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

    def sample(self, rng: RandomState, n: int) -> tuple[torch.Tensor, list[str], torch.Tensor | None]:
        """A global batch of n scaled latents, their captions and their geometry rows (or None), drawn
        from `rng`."""
        idx = torch.randint(len(self.pixels), (n,), generator=rng.torch)
        mean, std = (self._mean[idx], self._std[idx]) if self.cache else self._posterior(idx)
        z = mean + std * torch.randn(mean.shape, generator=rng.torch).to(mean.device)
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        geometry = None if self.geometry is None else self.geometry[idx]
        return (
            (z - shift) * self.vae.config.scaling_factor,
            [self.captions[i] for i in idx.tolist()],
            geometry,
        )


class CaptionTokens:
    """Captions as CLIP token ids (B, 77) int64, each distinct caption tokenized once: a training run draws
    the same captions thousands of times, and tokenizing them on every step cost the digits UNet stage on
    a GPU as much time as its EMA update."""

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
    """Plain CLIP encoding as diffusers' training scripts do it: no emphasis syntax, 77 tokens; the last
    layer, (B, 77, D) in the encoder's dtype."""
    device = next(text_encoder.parameters()).device  # `text_encoder` may be wrapped for several processes
    return text_encoder(tokens(captions).to(device, non_blocking=True))[0]


class CaptionEncoder:
    """Captions to the UNet's `Conditioning`, as diffusers' training scripts encode them (plain text,
    77 tokens, no emphasis syntax or chunks).

    SD 1.x/2.x: the text encoder's last layer (`train_text_to_image.py`). SDXL: both encoders'
    penultimate layers concatenated, the second encoder's projected pooled embedding, and six size ids
    per row, the image's original (height, width) and crop corner from `geometry` followed by the target
    (`size`, `size`) (`train_dreambooth_lora_sdxl.py`'s `encode_prompt` and `compute_time_ids`).

    `text_encoders` replace the pipeline's, in order, where a recipe trains them (prepared, perhaps
    wrapped for several processes); by default the pipeline's own."""

    def __init__(self, pipe: Pipeline, text_encoders: list | None = None, size: int | None = None) -> None:
        pairs = pipe.text_encoders
        self.tokens = [CaptionTokens(tokenizer) for tokenizer, _ in pairs]
        self.encoders = list(text_encoders) if text_encoders is not None else [e for _, e in pairs]
        self.sdxl = pipe.is_sdxl
        self.size = size or pipe.default_size

    def __call__(self, captions: list[str], geometry: torch.Tensor | None = None) -> Conditioning:
        """`Conditioning` of B captions; `geometry` (B, 4) float32 is needed for SDXL."""
        if not self.sdxl:
            return Conditioning(encode_text(self.tokens[0], self.encoders[0], captions))
        if geometry is None:
            raise ValueError("SDXL's conditioning needs each image's original size and crop (geometry)")
        hidden, pooled = [], None
        for tokens, encoder in zip(self.tokens, self.encoders, strict=True):
            device = next(encoder.parameters()).device
            out = encoder(tokens(captions).to(device, non_blocking=True), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's: CLIPTextModelWithProjection's text_embeds
        embeds = torch.cat(hidden, dim=-1)
        target = torch.tensor([self.size, self.size], dtype=torch.float32).expand(len(captions), 2)
        time_ids = torch.cat([geometry.float().cpu(), target], dim=1).to(embeds.device, embeds.dtype)
        return Conditioning(embeds, pooled, time_ids)


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
    cond: Conditioning,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """Per-sample loss (B,) of predicting the noise (or velocity) added to `latents` at `timesteps`,
    given the captions' conditioning `cond`."""
    device = cond.embeds.device
    latents, noise, timesteps = latents.to(device), noise.to(device), timesteps.to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    pred = unet(noisy.to(cond.embeds.dtype), timesteps, **cond.unet_kwargs()).sample
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
