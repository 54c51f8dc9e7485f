"""Cheap previews of latents during sampling: a linear latent -> RGB map fitted to the model's own VAE,
or, where the server was given one, a tiny decoder (TAESD).

A1111 previews SD 1.x latents with a fixed 4x3 matrix ("Approx cheap") measured for SD's VAE. sdlab
fits that matrix for whatever VAE the model has, once, by least squares between random latents and
their decoded images averaged over each latent pixel's patch: one small decode (16 latents of 8x8)
and then a matrix product per preview, a thousand times cheaper than decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import PIL.Image
import torch

from sdlab.pipeline import Pipeline
from sdlab.sampling.latents import decode_latents, full_precision_vae


@dataclass(frozen=True)
class DecoderPreview:
    """Previews decoded by a tiny decoder (TAESD, `sdlab.loading.decoder`): the image itself, at a small cost."""

    decoder: Any  # an AutoencoderTiny on the model's device

    @torch.no_grad()
    def image(self, latents: torch.Tensor) -> PIL.Image.Image:
        """The decoded RGB image of `latents` (C, h, w)."""
        x = decode_latents(self.decoder, latents[None].to(self.decoder.device, self.decoder.dtype))[0]
        array = ((x.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return PIL.Image.fromarray(array, "RGB")


@dataclass(frozen=True)
class LatentPreview:
    """`weight` (C, 3) and `bias` (3,) map a latent pixel to the mean RGB in [0, 1] of its patch."""

    weight: torch.Tensor
    bias: torch.Tensor
    factor: int  # pixels per latent pixel

    @classmethod
    @torch.no_grad()
    def fit(cls, pipe: Pipeline, samples: int = 16, side: int = 8, seed: int = 0) -> LatentPreview:
        """Fit on `samples` random N(0, 1) latents of `side` x `side`, decoded by `pipe.vae`."""
        generator = torch.Generator().manual_seed(seed)
        channels = pipe.vae.config.latent_channels
        latents = torch.randn(samples, channels, side, side, generator=generator)
        with full_precision_vae(pipe.vae) as vae:  # SDXL's float16 VAE overflows
            pixels = decode_latents(vae, latents.to(pipe.device, vae.dtype)).float().cpu()
        targets = torch.nn.functional.avg_pool2d((pixels + 1) / 2, pipe.vae_scale_factor)  # (N, 3, s, s)
        x = latents.permute(0, 2, 3, 1).reshape(-1, channels)
        x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
        y = targets.permute(0, 2, 3, 1).reshape(-1, 3)
        solution = torch.linalg.lstsq(x, y).solution  # (C + 1, 3)
        return cls(solution[:-1], solution[-1], pipe.vae_scale_factor)

    def image(self, latents: torch.Tensor) -> PIL.Image.Image:
        """An RGB preview of `latents` (C, h, w), upscaled to the image's size (h, w times the factor)."""
        rgb = torch.einsum("chw,ck->hwk", latents.detach().float().cpu(), self.weight) + self.bias
        array = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        image = PIL.Image.fromarray(array, "RGB")
        return image.resize((image.width * self.factor, image.height * self.factor), PIL.Image.NEAREST)
