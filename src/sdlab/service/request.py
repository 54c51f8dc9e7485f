"""One generation request, as the CLI, the HTTP API and the web UI make it, validated in one place.

A request is `generate`'s arguments (diffusers' names) plus what an application adds around the
sampling loop: the model by name, extra networks (LoRAs with weights, textual-inversion embeddings,
and A1111's `<lora:NAME:WEIGHT>` prompt syntax), a batch count, and mask handling (blur, invert).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from sdlab.errors import InputError
from sdlab.options import option
from sdlab.sampling.hires import HiresParams
from sdlab.sampling.params import MAX_SEED, SamplingParams, check_int, check_number

# A1111's extra-network syntax: <lora:NAME>, <lora:NAME:WEIGHT>; extra fields after a second ':'
# (A1111's "te=..., unet=..." weights) are not supported and make the tag an error, not a guess.
EXTRA_NETWORK = re.compile(r"<(lora|lyco):([^:<>]+)(?::([^<>]*))?>", re.IGNORECASE)
MAX_BATCH = 64  # images in one batch (`num_images_per_prompt`)
MAX_BATCH_COUNT = 100  # batches in one request (A1111's n_iter)
MAX_IMAGES = 256  # images in one request, all batches together: every one is held until the end
DEFAULT_GUIDE_SCALE = 8.0  # best accuracy (both classifiers) and FID in the guide sweep (docs/eval)


@dataclass(frozen=True)
class LoraRef:
    """A LoRA by name (a registry name, or a file path where the caller allows paths) at `weight`."""

    name: str
    weight: float = 1.0


@dataclass(frozen=True)
class GenerationRequest(HiresParams, SamplingParams):
    """One call as an application makes it: the sampling loop's `SamplingParams` plus what surrounds it.

    - `model`: a registry name (`"digits"`, a checkpoint's file name), or a path where the registry
      allows paths (the CLI); None is the registry's current model.
    - `prompt` may carry `<lora:NAME:WEIGHT>` tags: they are removed before encoding and the LoRAs
      applied for this request only, as A1111 does. `loras` and `embeddings` add networks explicitly.
      Embeddings in the registry's folders are also applied when their name appears in a prompt.
    - `batch_count` batches of `num_images_per_prompt` images run one after another (A1111's
      `n_iter` x `batch_size`); image i of the whole request has seed `seed + i`.
    - `vae_decoder`: a tiny decoder (TAESD) for the final images: `"tiny"`, the model folder's own
      (`vae_tiny/`), or a diffusers folder where the registry allows paths (the CLI; never from HTTP).
    - `hr_*` (`HiresParams`): the hires fix, A1111's two-pass text-to-image (`sdlab.sampling.hires`).
    - `mask_blur`: Gaussian blur radius in pixels applied to the mask before use (A1111's
      `mask_blur`); `invert_mask` repaints the black part instead (A1111's `inpainting_mask_invert`).
    Images (`init_image`, `mask_image`) may be paths, PIL images, or the bytes of an encoded file.
    """

    model: str | None = None
    batch_count: int = option(1, "batches run one after another (A1111's batch count)", a1111="n_iter")
    mask_blur: float = option(
        0.0, "blur the mask by this Gaussian radius in pixels first (A1111's mask blur)", a1111="mask_blur"
    )
    invert_mask: bool = option(False, "repaint the black part of the mask instead of the white")
    clip_stop_at_last_layers: int | None = option(
        None, "A1111's Clip skip option (1: the last layer), as its API sets it: clip_skip N - 1 on SD 1.x/2.x; "
        "no effect on SDXL, where A1111 ignores it", metavar="N",
    )  # fmt: skip
    guide_digit: int | None = option(
        None, "steer towards this digit with the digit classifier's gradient (works with an empty prompt)"
    )
    guide_scale: float = option(
        DEFAULT_GUIDE_SCALE, "step size of --guide-digit along the classifier's gradient"
    )
    vae_decoder: str | None = option(
        None,
        "decode the final latents with a tiny decoder: 'tiny' (the model's own, e.g. the digits model's) "
        "or a diffusers AutoencoderTiny/TAESD folder",
        metavar="tiny|DIR",
    )
    loras: tuple[LoraRef, ...] = ()
    embeddings: tuple[str, ...] = ()

    def validate(self) -> GenerationRequest:
        """Check every field that can be checked without the model; raise `InputError` with one sentence.

        Sizes (multiples of the model's VAE factor) and images are checked when the model is known.
        """
        super().validate()
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt or "", str):
            raise InputError("a request takes one prompt and one negative prompt, as text")
        if isinstance(self.seed, list):
            raise InputError(f"a request takes one seed (image i gets seed + i), got {self.seed!r}")
        check_int("num_images_per_prompt (batch size)", self.num_images_per_prompt, 1, MAX_BATCH)
        check_int("batch_count", self.batch_count, 1, MAX_BATCH_COUNT)
        total = self.num_images_per_prompt * self.batch_count
        if total > MAX_IMAGES:
            raise InputError(
                f"{total} images in one request is more than {MAX_IMAGES}; split it into several"
            )
        if self.seed is not None and self.seed + total - 1 > MAX_SEED:
            raise InputError(f"seed {self.seed} + {total} images passes the largest seed, {MAX_SEED}")
        check_number("mask_blur", self.mask_blur, low=0, high=64)
        check_int("clip_stop_at_last_layers", self.clip_stop_at_last_layers, 1, 48, optional=True)
        if self.guide_digit is not None:
            check_guide(self.guide_digit, self.guide_scale)
        for lora in self.all_loras():
            check_number(f"the weight of LoRA {lora.name!r}", lora.weight)
        if self.hiresfix() is not None and self.init_image is not None:
            raise InputError(
                "the hires fix applies to text-to-image; leave out the init image, or the hr_ settings"
            )
        return self

    def sampling(self, **changes: Any) -> SamplingParams:
        """The sampling loop's part of the request, with `changes` (e.g. one batch's seeds)."""
        values = {name: getattr(self, name) for name in SamplingParams.__dataclass_fields__}
        return SamplingParams(**{**values, **changes})

    def all_loras(self) -> list[LoraRef]:
        """`loras`, then the `<lora:...>` tags of the prompt and the negative prompt, in order."""
        tags = [*prompt_loras(self.prompt), *prompt_loras(self.negative_prompt or "")]
        return [*self.loras, *tags]


def check_guide(digit: Any, scale: Any) -> None:
    """`InputError` unless `digit` is 0-9 and `scale` a finite number >= 0 (`--guide-digit`, `--guide-scale`)."""
    if isinstance(digit, bool) or not isinstance(digit, int) or not 0 <= digit <= 9:
        raise InputError(f"--guide-digit must be a digit from 0 to 9, got {digit!r}")
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 <= scale < float("inf"):
        raise InputError(f"--guide-scale must be a number >= 0, got {scale!r}")


def a1111_fields() -> dict[str, str]:
    """AUTOMATIC1111's name of each request field that has one (its API body, its prompts-from-file
    options) -> the field: {"steps": "num_inference_steps", "cfg_scale": "guidance_scale", ...}. The
    sampler (A1111's `sampler_name` + `scheduler`) is one field here, `scheduler`, mapped by
    `sdlab.sampling.schedulers.resolve_sampler`."""
    return {f.metadata["a1111"]: f.name for f in fields(GenerationRequest) if "a1111" in f.metadata}


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
