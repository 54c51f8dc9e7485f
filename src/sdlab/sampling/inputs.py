"""What the loop starts from: seeds, the init image (pixels or earlier latents), the inpainting mask.

Images are read by the safe loader (`sdlab.images`: bombs, truncation, alpha, 16-bit, EXIF) and turned
into tensors by diffusers' `VaeImageProcessor`, as diffusers' img2img and inpainting pipelines do.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import PIL.Image
import torch
from diffusers.image_processor import VaeImageProcessor

from sdlab.errors import InputError
from sdlab.images import load_image, load_mask
from sdlab.sampling.inpainting import MaskCrop, crop_region, fill_masked, to_pil
from sdlab.sampling.latents import encode_images
from sdlab.sampling.params import MAX_SEED, MAX_SIDE, ImageInput, SamplingParams

if TYPE_CHECKING:
    from sdlab.pipeline import Pipeline


@dataclass
class InitImage:
    """An init image as the loop uses it: `pixels` (1 or B, 3, H, W) in [-1, 1] with the `size` (W, H) it
    was given at, or `latents` (1 or B, C, h, w) of an earlier result (then `pixels` is None)."""

    pixels: torch.Tensor | None
    latents: torch.Tensor | None
    size: tuple[int, int] | None
    image: PIL.Image.Image | None = None  # the image as given (RGB), where it was one


def seeds_for(seed: int | list[int] | None, batch_size: int) -> list[int]:
    """Image i gets `seed + i`; a list gives each image's seed; None draws one at random."""
    if seed is None:
        seed = random.SystemRandom().randrange(MAX_SEED + 1 - batch_size)
    if isinstance(seed, int) and not isinstance(seed, bool):
        seeds = [seed + i for i in range(batch_size)]
    else:
        seeds = list(seed)
        if len(seeds) != batch_size:
            raise InputError(f"got {len(seeds)} seeds for a batch of {batch_size} images")
    if seeds[-1] > MAX_SEED:
        raise InputError(f"seed {seeds[0]} + {batch_size} images passes the largest seed, {MAX_SEED}")
    return seeds


def prepare_init(pipe: Pipeline, params: SamplingParams, processor: VaeImageProcessor) -> InitImage | None:
    """The init image of `params`, resized to its height and width if given; None for text-to-image.

    Images always arrive as 3-channel RGB (alpha composited by `load_image`), so only a tensor with the
    VAE's latent channel count is ever taken for latents."""
    image: ImageInput | None = params.init_image
    if image is None:
        return None
    if isinstance(image, torch.Tensor):
        x = image if image.ndim == 4 else image.unsqueeze(0)
        if x.shape[1] == pipe.vae.config.latent_channels:
            if params.mask_image is not None:
                raise InputError("inpainting needs an init image, not latents, to know which pixels to keep")
            return InitImage(None, x, None)
        if x.shape[1] != 3:
            raise InputError(
                f"an init_image tensor must have 3 channels (an image in [0, 1]) or "
                f"{pipe.vae.config.latent_channels} (latents), got shape {tuple(x.shape)}"
            )
        size = (x.shape[3], x.shape[2])
    else:
        x = load_image(image, what="init image")
        size = x.size
        image = x
    factor = pipe.vae_scale_factor
    for name, side, given in (("width", size[0], params.width), ("height", size[1], params.height)):
        if given is None and side < factor:  # diffusers would round the side down to 0 and fail inside
            raise InputError(
                f"the init image is {size[0]}x{size[1]} pixels; its {name} must be at least {factor} (the VAE's "
                f"factor), or give a {name} to resize it to"
            )
    original = image if isinstance(image, PIL.Image.Image) else to_pil(x * 2 - 1)
    return InitImage(processor.preprocess(x, height=params.height, width=params.width), None, size, original)


def prepare_inpainting(
    pipe: Pipeline, params: SamplingParams, init: InitImage, processor: VaeImageProcessor
) -> tuple[InitImage, MaskCrop | None]:
    """The init image as inpainting starts from it (`sdlab.sampling.inpainting`): cut to the mask's region
    with `padding_mask_crop` (then also the `MaskCrop` to paste the result back with), and with its masked
    area filled unless `inpainting_fill` is "original"."""
    mask = load_mask(params.mask_image, size=init.image.size)
    crop = None
    if params.padding_mask_crop is not None and mask.getbbox() is None:
        raise InputError("the mask is all black: nothing to repaint (white marks what inpainting repaints)")
    if params.padding_mask_crop is not None:
        height, width = processor.get_default_height_width(init.image, params.height, params.width)
        coords = crop_region(mask, width, height, params.padding_mask_crop)
        pixels = processor.preprocess(
            init.image, height=height, width=width, crops_coords=coords, resize_mode="fill"
        )
        crop = MaskCrop(coords, init.image, mask)
        init = dataclasses.replace(init, pixels=pixels)
    if params.inpainting_fill != "original":
        height, width = init.pixels.shape[-2:]
        region = mask.crop(crop.coords) if crop is not None else mask
        filled = fill_masked(
            to_pil(init.pixels), region.resize((width, height), PIL.Image.Resampling.LANCZOS)
        )
        init = dataclasses.replace(init, pixels=processor.preprocess(filled))
    return init, crop


def output_size(pipe: Pipeline, params: SamplingParams, init: InitImage | None) -> tuple[int, int]:
    """(height, width) in pixels: the init image's, else the call's, else the model's own size; each a
    positive multiple of the VAE's factor, at most `MAX_SIDE` (`InputError` otherwise)."""
    factor = pipe.vae_scale_factor
    if init is not None and init.latents is not None:
        height, width = init.latents.shape[2] * factor, init.latents.shape[3] * factor
    elif init is not None:
        height, width = init.pixels.shape[2], init.pixels.shape[3]
    else:
        height = pipe.default_size if params.height is None else params.height
        width = pipe.default_size if params.width is None else params.width
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % factor:
            raise InputError(
                f"{name} must be a positive multiple of {factor} (the VAE's factor), got {value!r}"
            )
        if value > MAX_SIDE:
            raise InputError(f"{name} {value} is larger than the maximum of {MAX_SIDE} pixels")
    return height, width


def prepare_mask(
    pipe: Pipeline,
    params: SamplingParams,
    init: InitImage,
    size: tuple[int, int],
    batch_size: int,
    generators: list[torch.Generator],
    crop: MaskCrop | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mask (B, 1, h, w) of 0/1 at latent resolution, 1 = repaint; masked-image latents (B, C, h, w) for a
    9-channel inpainting UNet, else None), as diffusers' `StableDiffusionInpaintPipeline.prepare_mask_latents`;
    cut to `crop` for an "only masked" run."""
    height, width = size
    mask = load_mask(params.mask_image, size=init.size)
    processor = VaeImageProcessor(
        vae_scale_factor=pipe.vae_scale_factor,
        do_normalize=False,
        do_binarize=True,
        do_convert_grayscale=True,
    )
    cut = {} if crop is None else {"crops_coords": crop.coords, "resize_mode": "fill"}
    mask = processor.preprocess(mask, height=height, width=width, **cut)  # (1, 1, H, W) of 0/1
    masked_latents = None
    if pipe.is_inpainting_unet:
        masked = (init.pixels * (mask < 0.5)).to(pipe.device, pipe.dtype)
        masked_latents = encode_images(pipe.vae, repeat_to(masked, batch_size), generators)
    latent_size = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    small = torch.nn.functional.interpolate(mask, size=latent_size)
    return repeat_to(small, batch_size).to(pipe.device, pipe.dtype), masked_latents


def repeat_to(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`x` (n, ...) repeated to `batch_size` rows; `InputError` unless n divides it."""
    if x.shape[0] == batch_size:
        return x
    if batch_size % x.shape[0]:
        raise InputError(f"cannot spread {x.shape[0]} init images over a batch of {batch_size}")
    return x.repeat(batch_size // x.shape[0], 1, 1, 1)
