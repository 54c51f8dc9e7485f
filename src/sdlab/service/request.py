"""One generation request, as the CLI, the HTTP API and the web UI make it, validated in one place.

A request is `generate`'s arguments (diffusers' names) plus what an application adds around the
sampling loop: the model by name, extra networks (LoRAs with weights, textual-inversion embeddings,
and A1111's `<lora:NAME:WEIGHT>` prompt syntax), a batch count, and mask handling (blur, invert).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from sdlab.errors import InputError
from sdlab.sampling.loop import MAX_SEED, check_guidance_interval, check_numbers
from sdlab.sampling.schedulers import SCHEDULERS

# A1111's extra-network syntax: <lora:NAME>, <lora:NAME:WEIGHT>; extra fields after a second ':'
# (A1111's "te=..., unet=..." weights) are not supported and make the tag an error, not a guess.
EXTRA_NETWORK = re.compile(r"<(lora|lyco):([^:<>]+)(?::([^<>]*))?>", re.IGNORECASE)
MAX_BATCH = 64  # images in one batch (`num_images_per_prompt`)
MAX_BATCH_COUNT = 100  # batches in one request (A1111's n_iter)
MAX_IMAGES = 256  # images in one request, all batches together: every one is held until the end

ImageInput = str | Path | PIL.Image.Image | bytes | torch.Tensor


@dataclass(frozen=True)
class LoraRef:
    """A LoRA by name (a registry name, or a file path where the caller allows paths) at `weight`."""

    name: str
    weight: float = 1.0


@dataclass
class GenerationRequest:
    """Everything one call asks for. Field names are `sdlab.generate`'s (diffusers') argument names.

    - `model`: a registry name (`"digits"`, a checkpoint's file name), or a path where the registry
      allows paths (the CLI); None is the registry's current model.
    - `prompt` may carry `<lora:NAME:WEIGHT>` tags: they are removed before encoding and the LoRAs
      applied for this request only, as A1111 does. `loras` and `embeddings` add networks explicitly.
      Embeddings in the registry's folders are also applied when their name appears in a prompt.
    - `batch_count` batches of `num_images_per_prompt` images run one after another (A1111's
      `n_iter` x `batch_size`); image i of the whole request has seed `seed + i`.
    - `guidance_interval`: (lo, hi) noise levels sigma between which classifier-free guidance runs
      (hi None: unbounded); None is the model's recommendation (see `parse_guidance_interval`).
    - `deep_cache`: run the UNet whole every N steps, its shallow path in between (DeepCache); 1: off;
      None: the model's recommendation.
    - `vae_decoder`: a tiny decoder (TAESD) for the final images: `"tiny"`, the model folder's own
      (`vae_tiny/`), or a diffusers folder where the registry allows paths (the CLI; never from HTTP).
    - `mask_blur`: Gaussian blur radius in pixels applied to the mask before use (A1111's
      `mask_blur`); `invert_mask` repaints the black part instead (A1111's `inpainting_mask_invert`).
    Images (`init_image`, `mask_image`) may be paths, PIL images, or the bytes of an encoded file.
    """

    prompt: str = ""
    negative_prompt: str | None = None
    model: str | None = None
    scheduler: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    guidance_rescale: float = 0.0
    guidance_interval: tuple[float, float | None] | None = None
    deep_cache: int | None = None
    seed: int | None = None
    height: int | None = None
    width: int | None = None
    num_images_per_prompt: int = 1
    batch_count: int = 1
    init_image: ImageInput | None = None
    strength: float | None = None
    mask_image: ImageInput | None = None
    mask_blur: float = 0.0
    invert_mask: bool = False
    eta: float = 0.0
    guide_digit: int | None = None
    guide_scale: float = 8.0
    vae_decoder: str | None = None
    loras: tuple[LoraRef, ...] = ()
    embeddings: tuple[str, ...] = ()

    def validate(self) -> GenerationRequest:
        """Check every field that can be checked without the model; raise `InputError` with one sentence.

        Sizes (multiples of the model's VAE factor) and images are checked when the model is known.
        """
        check_numbers(
            1 if self.num_inference_steps is None else self.num_inference_steps,
            1.0 if self.guidance_scale is None else self.guidance_scale,
            self.guidance_rescale,
            self.num_images_per_prompt,
            self.eta,
        )  # the loop's own checks, so both say the same sentence
        if self.guidance_interval is not None:
            check_guidance_interval(self.guidance_interval)
        _check_int("num_inference_steps", self.num_inference_steps, 1, 10_000, optional=True)
        _check_int("deep_cache", self.deep_cache, 1, 10_000, optional=True)
        _check_int("num_images_per_prompt", self.num_images_per_prompt, 1, MAX_BATCH)
        _check_int("batch_count", self.batch_count, 1, MAX_BATCH_COUNT)
        _check_int("height", self.height, 1, 4096, optional=True)
        _check_int("width", self.width, 1, 4096, optional=True)
        _check_int("seed", self.seed, 0, MAX_SEED, optional=True)
        total = self.num_images_per_prompt * self.batch_count
        if total > MAX_IMAGES:
            raise InputError(
                f"{total} images in one request is more than {MAX_IMAGES}; split it into several"
            )
        if self.seed is not None and self.seed + total - 1 > MAX_SEED:
            raise InputError(f"seed {self.seed} + {total} images passes the largest seed, {MAX_SEED}")
        _check_number("strength", self.strength, optional=True)
        _check_number("mask_blur", self.mask_blur)
        if not 0 <= self.mask_blur <= 64:
            raise InputError(f"mask_blur must be from 0 to 64 pixels, got {self.mask_blur}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise InputError(f"unknown scheduler {self.scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
        if self.mask_image is not None and self.init_image is None:
            raise InputError("a mask needs an init image to inpaint; pass init_image (--init-image) too")
        for prompt in (self.prompt, self.negative_prompt or ""):
            if not isinstance(prompt, str):
                raise InputError(f"a prompt must be text, got {type(prompt).__name__}")
        for lora in self.all_loras():
            _check_number(f"the weight of LoRA {lora.name!r}", lora.weight)
        return self

    def all_loras(self) -> list[LoraRef]:
        """`loras`, then the `<lora:...>` tags of the prompt and the negative prompt, in order."""
        tags = [*prompt_loras(self.prompt), *prompt_loras(self.negative_prompt or "")]
        return [*self.loras, *tags]

    def replace(self, **changes: Any) -> GenerationRequest:
        return dataclasses.replace(self, **changes)


def parse_guidance_interval(text: str | None) -> tuple[float, float | None] | None:
    """ "LO,HI" (noise levels sigma; HI may be "inf") -> (lo, hi); "all" -> every step; None -> None.

    Raises `InputError` with one sentence for anything else."""
    if text is None:
        return None
    if text.strip().lower() in ("all", "always"):
        return (0.0, None)
    parts = [part.strip() for part in text.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise InputError(
            f"--guidance-interval must be LO,HI (noise levels sigma, e.g. 0.3,5 or 1,inf) or 'all', got {text!r}"
        ) from None
    check_guidance_interval((lo, hi))
    return (lo, None if math.isinf(hi) else hi)


def prompt_loras(prompt: str) -> list[LoraRef]:
    """The `<lora:NAME:WEIGHT>` tags of a prompt; WEIGHT defaults to 1 (A1111's syntax)."""
    refs = []
    for match in EXTRA_NETWORK.finditer(prompt):
        name, weight = match.group(2).strip(), (match.group(3) or "1").strip()
        try:
            value = float(weight)
        except ValueError:
            raise InputError(
                f"{match.group(0)} in the prompt: the weight after the name must be a number, "
                f"e.g. <lora:{name}:0.8>"
            ) from None
        refs.append(LoraRef(name, value))
    return refs


def strip_extra_networks(prompt: str) -> str:
    """The prompt without its `<lora:...>` tags, as A1111 encodes it."""
    return EXTRA_NETWORK.sub("", prompt)


def _check_int(name: str, value: Any, low: int, high: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InputError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def _check_number(name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
