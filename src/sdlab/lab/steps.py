"""Watching one generation: every step's latents and predicted clean image, and guidance made visible.

The seed explains diffusion as noise turned into a digit a little at a time. At step i the UNet's
noise prediction implies a clean image x̂₀ = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t; early on it is a blur of every
digit, later it is the digit. Classifier-free guidance extrapolates from the unconditional prediction
towards the conditional one, ε̂ = ε̂_u + w·(ε̂_c − ε̂_u); decoding the x̂₀ of each branch side by side
shows what the prompt adds and what the guidance scale w exaggerates.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from sdlab.lab.attention import WordMap, latent_size, recording_attention, word_maps
from sdlab.pipeline import Pipeline
from sdlab.sampling.latents import decode_latents
from sdlab.sampling.loop import StepInfo
from sdlab.service import GeneratedImage, GenerationRequest, ModelRegistry, run_request
from sdlab.service.preview import LatentPreview

MAX_DECODED_SIDE = 128  # larger images are previewed with the linear latent -> RGB map, not decoded


@dataclass
class Frame:
    step: int  # from 1
    timestep: float
    latents: PIL.Image.Image  # x_t after this step, as an image
    x0: PIL.Image.Image  # the clean image predicted at this step
    guided: bool = False  # classifier-free guidance ran at this step (inside the guidance interval)


@dataclass
class GuidanceSplit:
    """x̂₀ of the unconditional branch, the conditional branch and the guided mix, at one step."""

    step: int
    unconditional: PIL.Image.Image
    conditional: PIL.Image.Image
    guided: PIL.Image.Image


@dataclass
class Watch:
    image: GeneratedImage
    frames: list[Frame]
    split: GuidanceSplit | None  # None when no step was guided
    digit_probability: list[float] | None  # with `--guide-digit`: p(digit | x̂₀) per step
    attention: list[WordMap] | None = None  # with attention=True: where each prompt word lands


@torch.no_grad()
def watch(
    registry: ModelRegistry,
    request: GenerationRequest,
    *,
    split_step: int | None = None,
    attention: bool = False,
) -> Watch:
    """Generate image 0 of `request` and keep what each step computed.

    `split_step` (from 1; default: the middle step) is the step whose guidance branches are shown (the
    nearest guided step when a guidance interval leaves that one unguided);
    `attention` also maps each prompt word's cross-attention in the same run (`lab.attention`).
    Frames are the scheduler's model evaluations: second-order samplers (Heun) show about two per step.
    The UNet runs whole at every step unless the request asks for a deep cache: a model's recommended
    cache would leave most layers (and their attention) out of the cached steps being shown.
    Raises `InputError` for a bad request, as `run_request` does.
    """
    request = request.replace(
        num_images_per_prompt=1, batch_count=1, deep_cache=request.deep_cache or 1
    ).validate()
    kept: dict[str, list[torch.Tensor]] = {"latents": [], "x0": [], "split": []}
    timesteps: list[float] = []
    guided: list[bool] = []
    chosen: list[int] = []

    def observe(info: StepInfo) -> None:
        timesteps.append(info.timestep)
        guided.append(info.noise_uncond is not None)
        kept["latents"].append(info.latents[:1].clone())
        kept["x0"].append(info.x0()[:1].clone())
        if info.noise_uncond is None:
            return
        wanted = min(split_step, info.total) if split_step is not None else (info.total + 1) // 2
        step = info.step + 1
        if not chosen or abs(step - wanted) < abs(
            chosen[0] - wanted
        ):  # the guided step nearest the wanted one
            chosen[:] = [step]
            kept["split"] = [info.x0(info.noise_uncond)[:1], info.x0(info.noise_cond)[:1], info.x0()[:1]]

    pipe = registry.pipeline(registry.find_model(request.model))
    with recording_attention(pipe, latent_size(pipe, request)) if attention else nullcontext() as store:
        result = run_request(registry, request, observe=observe)
    # every kept latent turned into pixels in one call (one VAE batch, or one fitted preview map)
    steps = len(timesteps)
    pixels = _pixels(pipe, torch.cat(kept["latents"] + kept["x0"] + kept["split"]))
    latents_pixels, x0_pixels, split_pixels = pixels[:steps], pixels[steps : 2 * steps], pixels[2 * steps :]
    frames = [
        Frame(i + 1, t, image, x0, g)
        for i, (t, image, x0, g) in enumerate(
            zip(timesteps, _images(latents_pixels), _images(x0_pixels), guided, strict=True)
        )
    ]
    split = None
    if kept["split"]:
        unconditional, conditional, guided = _images(split_pixels)
        split = GuidanceSplit(chosen[0], unconditional, conditional, guided)
    probability = None
    if request.guide_digit is not None:
        probability = digit_probabilities(x0_pixels, request.guide_digit)
    words = word_maps(pipe, request.prompt, store, result.images[0].image) if attention else None
    return Watch(result.images[0], frames, split, probability, words)


def digit_probabilities(pixels: torch.Tensor, digit: int) -> list[float]:
    """p(digit | image) under the evaluation classifier (the one `--guide-digit` steers with)."""
    from sdlab.digits.classifier import EVAL_CLASSIFIER, DigitClassifier
    from sdlab.digits.data import to_gray

    classifier = DigitClassifier.load(EVAL_CLASSIFIER)
    probabilities = torch.softmax(classifier(to_gray(pixels)), dim=-1)[:, digit]
    return [float(p) for p in probabilities]


def _pixels(pipe: Pipeline, latents: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1]: decoded by the VAE, or the linear preview for large images."""
    if latents.shape[-1] * pipe.vae_scale_factor <= MAX_DECODED_SIDE:
        return (decode_latents(pipe.vae, latents.to(pipe.dtype)).float().cpu() / 2 + 0.5).clamp(0, 1)
    preview = LatentPreview.fit(pipe)
    images = [preview.image(x) for x in latents]
    return torch.stack([torch.from_numpy(np.asarray(i)).permute(2, 0, 1) / 255 for i in images])


def _images(pixels: torch.Tensor) -> list[PIL.Image.Image]:
    array = (pixels.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    return [PIL.Image.fromarray(a, "RGB") for a in array]
