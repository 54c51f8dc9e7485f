"""What one request may cost a server: each request is priced before it is queued, against `Limits`.

A request's cost is its pixels per image (the hires fix's final size), its denoising steps per pass, its
prompts' token chunks, and its work: megapixels x steps x images x UNet evaluations per step (2 with
classifier-free guidance), the figure a step's time grows with. A request over a limit gets one sentence
naming the limit and the `sdlab serve` flag that raises it (HTTP 422), before any model work. A running
request is also bounded in time (`request_timeout`): the worker stops it within one UNet block or VAE block
(`sdlab.service.worker`).

The defaults come from the device. On a CPU they are sized to answer within minutes: 1024x1024 pixels (SDXL's
own size), 150 steps (A1111's slider), 8 chunks of 75 tokens per prompt, 64 megapixel-evaluations (four
512x512 images at 30 guided steps; about 20 minutes for SD 1.5 on 2 cores) and 10 minutes. On a GPU, pixels
follow its memory (2**18 pixels per GiB: 4096x4096 at 64 GiB), work is bounded by the time limit alone, and
prompts may have 32 chunks.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from sdlab.errors import InputError
from sdlab.sampling.params import MAX_SIDE

if TYPE_CHECKING:
    from sdlab.service.request import GenerationRequest

TOKENS_PER_CHUNK = 75  # what one CLIP pass reads (77 with the start and end tokens)
CHARS_PER_TOKEN = 16  # a prompt longer than this per allowed token is refused before it is tokenized
GUESSED_SIDE = 1024  # pixels: a model's own size before it is loaded (the largest of SD's families)
GUESSED_STEPS = 50  # a model's recommended steps before it is loaded (diffusers' default, above sdlab's)


class LimitExceeded(InputError):
    """A request costs more than the server allows; the sentence names the limit and its flag."""


@dataclass(frozen=True)
class Limits:
    """The most one request may ask of a server. None: no limit of that kind."""

    max_pixels: int | None = None  # width x height of one image
    max_steps: int | None = None  # denoising steps of one pass
    max_prompt_tokens: int | None = None  # tokens of one prompt, counted as whole 75-token chunks
    max_work: float | None = None  # megapixels x steps x images x UNet evaluations per step
    request_timeout: float | None = None  # seconds a running request may take

    @classmethod
    def for_device(cls, device: Any = "cpu", memory_bytes: int | None = None) -> Limits:
        """The defaults for `device` (see the module doc); `memory_bytes` is a GPU's memory."""
        if str(device).startswith("cpu") or memory_bytes is None:
            return cls(1024 * 1024, 150, 8 * TOKENS_PER_CHUNK, 64.0, 600.0)
        pixels = min(MAX_SIDE * MAX_SIDE, memory_bytes // 2**30 * 2**18)
        return cls(max(pixels, 512 * 512), 150, 32 * TOKENS_PER_CHUNK, None, 600.0)

    def report(self) -> dict[str, Any]:
        """The limits as `/sdapi/v1/options` lists them (read only): `sdlab_max_pixels`, ..."""
        return {f"sdlab_{name}": value for name, value in asdict(self).items()}

    def check(self, request: GenerationRequest, *, size: int | None = None, steps: int | None = None) -> None:
        """Raise `LimitExceeded` with one sentence when `request` costs more than these limits.

        `size` and `steps` are the model's own (its default side in pixels, its recommended steps) where the
        request leaves them out; unknown (the model is not loaded yet), they are guessed high."""
        from sdlab.sampling.hires import target_size

        given = _init_size(request.init_image)  # img2img runs at the init image's size unless told otherwise
        width = request.width or (given[0] // 8 * 8 if given else None) or size or GUESSED_SIDE
        height = request.height or (given[1] // 8 * 8 if given else None) or size or GUESSED_SIDE
        hires = request.hiresfix()
        final_w, final_h = width, height
        if hires is not None:
            up_w, up_h, crop_x, crop_y = target_size(width, height, hires)
            final_w, final_h = up_w - crop_x, up_h - crop_y
        if self.max_pixels is not None:
            for w, h in {(width, height), (final_w, final_h)}:
                if w * h > self.max_pixels:
                    raise LimitExceeded(
                        f"{w}x{h} is {w * h:,} pixels, over this server's limit of {self.max_pixels:,} "
                        "(sdlab serve --max-pixels)"
                    )
        first = request.num_inference_steps or steps or GUESSED_STEPS
        second = (hires.hr_second_pass_steps or first) if hires is not None else 0
        if self.max_steps is not None:
            for name, value in (("steps", first), ("hires steps", second)):
                if value > self.max_steps:
                    raise LimitExceeded(
                        f"{value} {name} is over this server's limit of {self.max_steps} (sdlab serve --max-steps)"
                    )
        if self.max_prompt_tokens is not None:
            self._check_prompts(request)
        if self.max_work is not None:
            guided = request.guidance_scale is None or request.guidance_scale > 1
            images = request.num_images_per_prompt * request.batch_count
            parts = len(re.split(r"\bAND\b", request.prompt)) if isinstance(request.prompt, str) else 1
            evaluations = parts + 1 if guided else parts  # AND: one UNet row per part (composable diffusion)
            work = (width * height * first + final_w * final_h * second) / 1e6 * images * evaluations
            if work > self.max_work:
                raise LimitExceeded(
                    f"this request is {work:,.0f} megapixel-evaluations of the UNet (pixels x steps x {images} "
                    f"images x {evaluations} per step), over this server's limit of {self.max_work:g} (sdlab "
                    "serve --max-work); ask for fewer images, steps or pixels"
                )

    def _check_prompts(self, request: GenerationRequest) -> None:
        from sdlab.prompts import count_chunks

        assert self.max_prompt_tokens is not None
        texts = {
            "prompt": request.prompt, "negative prompt": request.negative_prompt,
            "hires prompt": request.hr_prompt, "hires negative prompt": request.hr_negative_prompt,
        }  # fmt: skip
        for name, text in texts.items():
            if not text:
                continue
            if len(text) > self.max_prompt_tokens * CHARS_PER_TOKEN:
                raise LimitExceeded(
                    f"the {name} is {len(text):,} characters, more than this server's limit of "
                    f"{self.max_prompt_tokens} tokens could hold (sdlab serve --max-prompt-tokens)"
                )
            tokens = count_chunks(_tokenizer(), [text]) * TOKENS_PER_CHUNK
            if tokens > self.max_prompt_tokens:
                raise LimitExceeded(
                    f"the {name} takes {tokens // TOKENS_PER_CHUNK} chunks of {TOKENS_PER_CHUNK} tokens (BREAK starts "
                    f"one), over this server's limit of {self.max_prompt_tokens} tokens (sdlab serve --max-prompt-tokens)"
                )


@cache
def _tokenizer() -> Any:
    """The shipped CLIP tokenizer, read once: every SD family's encoders split text into the same tokens."""
    from sdlab.loading.tokenizer import clip_tokenizer

    return clip_tokenizer()


def _init_size(image: Any) -> tuple[int, int] | None:
    """(width, height) of an init image given as a file's bytes, a path or a PIL image, from its header; None
    for none, for latents, or for a file the request's own checks will name."""
    if image is None:
        return None
    if hasattr(image, "size") and isinstance(image.size, tuple):
        return image.size
    if isinstance(image, bytes | str) or hasattr(image, "__fspath__"):
        from sdlab.images import check_image

        try:
            return check_image(image)
        except InputError:
            return None
    return None
