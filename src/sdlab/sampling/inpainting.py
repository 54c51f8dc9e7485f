"""A1111's inpainting options: what the masked area starts as ("Masked content") and "Only masked".

Masked content (`inpainting_fill`, A1111's `processing.py`), which matters below strength 1 (at strength 1
the masked area starts from pure noise whatever it holds):
    fill            the hole painted over with blurred colours from around it (A1111's `masking.fill`)
    original        the init image as it is (diffusers' only behaviour)
    latent noise    filled, then its latents replaced by the seed's noise where masked
    latent nothing  filled, then its latents zeroed where masked

Only masked (`padding_mask_crop`, A1111's `inpaint_full_res` with `inpaint_full_res_padding`): the
mask's bounding box plus the padding, widened to the output's aspect ratio, is cut out, sampled at the
output size (more pixels for a small hole) and pasted back over the original, whose unmasked pixels are
laid on top. diffusers' `StableDiffusionInpaintPipeline(padding_mask_crop=...)` implements A1111's
crop; its `VaeImageProcessor.get_crop_region` and `apply_overlay` do it here too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image, ImageFilter, ImageOps

from sdlab.sampling.params import MASKED_CONTENT

__all__ = ["MASKED_CONTENT", "MaskCrop", "crop_region", "fill_latents", "fill_masked", "to_pil"]

# A1111's `masking.fill`: blurs from wide to sharp, each composited over the last
_FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


@dataclass
class MaskCrop:
    """Where an "only masked" run was cut from: `coords` (x1, y1, x2, y2) in the original `image`, whose
    `mask` (mode "L", white = repaint) lays its unmasked pixels over the result."""

    coords: tuple[int, int, int, int]
    image: Image.Image
    mask: Image.Image

    def paste(self, processor: VaeImageProcessor, images: list[Image.Image]) -> list[Image.Image]:
        """Each result resized into the crop of the original, the original's unmasked pixels on top."""
        return [processor.apply_overlay(self.mask, self.image, image, self.coords) for image in images]


def crop_region(mask: Image.Image, width: int, height: int, padding: int) -> tuple[int, int, int, int]:
    """The box (x1, y1, x2, y2) an "only masked" run samples: the mask's white pixels' bounding box plus
    `padding` pixels, widened to the aspect ratio of `width` x `height` (A1111's `get_crop_region` and
    `expand_crop_region`, as diffusers has them)."""
    return VaeImageProcessor.get_crop_region(mask, width, height, pad=padding)


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """`image` (RGB) with its masked area (white in `mask`, mode "L") painted over with the colours around
    it, blurred at radii 256 down to 0 and composited, as A1111's `masking.fill`; unmasked pixels stay."""
    keep = ImageOps.invert(mask.convert("L"))
    known = Image.new("RGBa", image.size)
    known.paste(image.convert("RGBA").convert("RGBa"), mask=keep)  # premultiplied: the hole is transparent
    filled = Image.new("RGBA", image.size)
    for radius, repeats in _FILL_PASSES:
        blurred = known.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            filled.alpha_composite(blurred)
    return filled.convert("RGB")


def fill_latents(
    image_latents: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor, mode: str
) -> torch.Tensor:
    """The init image's latents (B, C, h, w) with the masked area (`mask` (B, 1, h, w), 1 = repaint) replaced
    by `noise` ("latent noise") or zeros ("latent nothing"), as A1111 does before noising; else as they are."""
    if mode == "latent noise":
        return image_latents * (1 - mask) + noise * mask
    if mode == "latent nothing":
        return image_latents * (1 - mask)
    return image_latents


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """One image (1, 3, H, W) in [-1, 1] as an 8-bit RGB PIL image."""
    array = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array))
