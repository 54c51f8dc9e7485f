"""The maths around the denoising loop, as pure functions: seeds, noise, strength, VAE scaling.

Randomness enters only through explicit CPU generators, one per image, so image i of a batch equals
that image generated alone, and a seed gives the same noise on every device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import AutoencoderKL
from diffusers.utils.torch_utils import randn_tensor


def generators_for(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image: noise drawn on the CPU is identical on CPU, CUDA and MPS."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def initial_noise(
    shape: tuple[int, ...], generators: list[torch.Generator], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Gaussian noise of `shape` (batch first), each row from its own generator."""
    return randn_tensor(shape, generator=generators, device=device, dtype=dtype)


def start_step(num_inference_steps: int, strength: float) -> int:
    """Index of the first denoising step for image-to-image: skip the first (1 - strength) of the schedule.

    strength 1 starts from pure noise (step 0); strength 0.3 runs only the last 30% of the steps.
    """
    init = min(int(num_inference_steps * strength), num_inference_steps)
    return max(num_inference_steps - init, 0)


@contextmanager
def full_precision_vae(vae: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The VAE, in float32 for the duration where it is float16 and its config says `force_upcast`
    (SDXL's original VAE overflows in float16 and draws black or NaN images), as diffusers' SDXL
    pipelines do; the fp16-fix VAE (force_upcast false) stays in float16. Other VAEs pass through."""
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        yield vae
    finally:
        if upcast:
            vae.to(torch.float16)


@contextmanager
def tiled_vae(vae: torch.nn.Module, on: bool) -> Iterator[torch.nn.Module]:
    """The VAE encoding and decoding in overlapping tiles for the duration when `on` (diffusers' `enable_tiling`:
    tiles of the config's sample_size, 25% overlap blended linearly), so that memory stays that of one tile; a
    VAE without tiling, or `on` False, passes through."""
    if not on or not hasattr(vae, "enable_tiling") or getattr(vae, "use_tiling", False):
        yield vae
        return
    vae.enable_tiling()
    try:
        yield vae
    finally:
        vae.disable_tiling()


@torch.no_grad()
def encode_images(
    vae: AutoencoderKL, images: torch.Tensor, generators: list[torch.Generator]
) -> torch.Tensor:
    """Images in [-1, 1] (batch, 3, H, W) -> scaled latents in the images' dtype, sampling each posterior
    with its own generator (in float32 where `full_precision_vae` upcasts)."""
    with full_precision_vae(vae):
        latents = [
            vae.encode(images[i : i + 1].to(vae.dtype)).latent_dist.sample(generator=generators[i])
            for i in range(len(generators))
        ]
    latents = torch.cat(latents)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((latents - shift) * vae.config.scaling_factor).to(images.dtype)


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1] (differentiable: gradient guidance backpropagates through it)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return vae.decode(latents / vae.config.scaling_factor + shift, return_dict=False)[0]


def guided_noise(uncond: torch.Tensor, cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance: move from the unconditional prediction towards (and past) the conditional one.

    eps = eps_uncond + s * (eps_cond - eps_uncond); the "uncond" branch is the negative prompt when one is given,
    so guidance also pushes away from it (Ho & Salimans 2022).
    """
    return uncond + guidance_scale * (cond - uncond)


def rescale_guided_noise(guided: torch.Tensor, cond: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Pull the guided prediction's std back towards the conditional one's, against over-exposure.

    Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", section 3.4; the same
    formula as diffusers' `rescale_noise_cfg`, kept here so sampling needs no pipeline module imports.
    """
    dims = list(range(1, cond.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return guidance_rescale * rescaled + (1 - guidance_rescale) * guided


def predicted_x0(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_bar: float, prediction_type: str
) -> torch.Tensor:
    """The clean latent a UNet output implies at x_t = `sample` (variance-preserving, i.e. after
    `scale_model_input`): x0 = (x_t - sqrt(1 - a) eps) / sqrt(a), or sqrt(a) x_t - sqrt(1 - a) v
    for v-prediction (Salimans & Ho 2022), with a = alphas_cumprod[t]."""
    a, s = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    if prediction_type == "epsilon":
        return (sample - s * model_output) / a
    if prediction_type == "v_prediction":
        return a * sample - s * model_output
    raise ValueError(f"predicted x0 needs an epsilon or v-prediction model, not {prediction_type}")


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int) -> torch.Tensor:
    """The sinusoidal embedding of guidance scales `w` (B,) that guidance-distilled UNets (LCM) take as
    `timestep_cond` (B, embedding_dim), float32; LCM passes w = guidance_scale - 1. As diffusers'
    `LatentConsistencyModelPipeline.get_guidance_scale_embedding` (after VDM's timestep embedding)."""
    w = w.float() * 1000.0
    half = embedding_dim // 2
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = w[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return torch.nn.functional.pad(embedding, (0, embedding_dim % 2))
