"""Running one `GenerationRequest`: the application around the sampling loop, shared by CLI, API and UI.

resolve names (registry) -> load the model -> read and prepare images (mask blur, invert) -> apply
the extra networks for this request -> `generate` each batch -> images with their recipes (PNG bytes
carrying A1111's `parameters` and sdlab's recipe) -> take the extra networks off again.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from PIL import ImageFilter, ImageOps

from sdlab.embeddings import embedding_fits
from sdlab.images import image_bytes, load_image, load_mask, png_bytes
from sdlab.loading.decoder import TINY
from sdlab.outputs import infotext, recipe
from sdlab.pipeline import Pipeline
from sdlab.sampling.hires import check_upscaler, generate_hires
from sdlab.sampling.loop import GenerationResult, StepInfo, StopSampling, generate
from sdlab.sampling.params import MAX_SEED
from sdlab.service.networks import extra_networks
from sdlab.service.registry import ModelEntry, ModelRegistry
from sdlab.service.request import GenerationRequest, strip_extra_networks

# on_step(batch index, step index, steps in the batch, latents (B, C, h, w)); may raise StopSampling
StepHook = Callable[[int, int, int, torch.Tensor], None]


@dataclass
class GeneratedImage:
    """One image and everything needed to make it again: `recipe` (the `sdlab` PNG chunk) and
    `infotext` (A1111's `parameters` text)."""

    image: PIL.Image.Image
    recipe: dict[str, Any]
    infotext: str

    def png(self) -> bytes:
        """The PNG file, with the `parameters` and `sdlab` text chunks."""
        return png_bytes(self.image, parameters=self.infotext, extra={"sdlab": json.dumps(self.recipe)})

    def encoded(self, fmt: str = "PNG") -> bytes:
        """The file in `fmt` ("PNG", "JPEG", "WEBP"): a PNG as `png()`, JPEG and WebP with the parameters in
        their EXIF UserComment, as A1111 encodes them (`sdlab.images.image_bytes`)."""
        return self.png() if fmt == "PNG" else image_bytes(self.image, fmt, parameters=self.infotext)


@dataclass
class RequestResult:
    """What a request made: every image of every batch with its recipe, the model it used, the seeds
    (image i has seeds[i]), the last batch's raw result (latents for chaining), and what the worker
    adds (`extra`: the job's timestamp, an interrupt's record)."""

    images: list[GeneratedImage]
    model: ModelEntry
    pipe: Pipeline
    seeds: list[int]
    last: GenerationResult | None = None  # the last batch, with its latents (for chaining)
    extra: dict[str, Any] = field(default_factory=dict)


def run_request(
    registry: ModelRegistry,
    request: GenerationRequest,
    *,
    on_step: StepHook | None = None,
    keep_going: Callable[[], bool] | None = None,
    observe: Callable[[StepInfo], None] | None = None,
) -> RequestResult:
    """Generate what `request` asks for. Raises `InputError` (one sentence) for anything wrong in it.

    `on_step` sees every denoising step and may raise `StopSampling` to end the current batch early
    (raised inside a model call instead, it ends the request with the batches done before);
    `keep_going()` is asked before each further batch (False after an interrupt); `observe` sees
    each step's predictions (`sdlab.sampling.loop.StepInfo`), as the lab uses them.
    """
    # 1. Check the request and resolve every name before anything is loaded
    request.validate()
    entry = registry.find_model(request.model)
    loras = [(registry.find_lora(ref.name), ref.weight) for ref in request.all_loras()]
    prompts = (request.prompt, request.negative_prompt or "")
    known = registry.embeddings()
    embeddings = {registry.find_embedding(e): e if e in known else None for e in request.embeddings}
    for name in registry.embeddings_in(prompts):
        embeddings.setdefault(registry.find_embedding(name), name)
    hires = request.hiresfix()
    guide = None
    if request.guide_digit is not None:
        from sdlab.digits.guidance import digit_guide

        guide = digit_guide(request.guide_digit, request.guide_scale)

    # 2. Images: read once (paths, uploads), the mask blurred and inverted as asked
    init_image, mask_image = _prepare_images(request)
    pipe = registry.pipeline(entry)
    # folder embeddings a prompt mentions that were made for another model family or width are skipped, and the
    # word stays text, as A1111's `skipped_embeddings` (named embeddings must fit: a request asked for them)
    skipped = [name for path, name in embeddings.items() if name is not None and name not in request.embeddings
               and not embedding_fits(pipe, path, allow_pickle=registry.allow_pickle)]  # fmt: skip
    embeddings = {path: name for path, name in embeddings.items() if name not in skipped}
    words = [name for name in embeddings.values() if name is not None]
    decoder = registry.vae_decoder(request.vae_decoder, pipe) if request.vae_decoder else None
    upscaler = None
    if hires is not None and check_upscaler(hires.hr_upscaler) == "model":
        upscaler = registry.upscaler(hires.hr_upscaler, pipe.device)

    # 3. Batches, with this request's extra networks on the model
    per_batch = request.num_images_per_prompt
    first_seed = request.seed
    if first_seed is None:
        first_seed = random.SystemRandom().randrange(MAX_SEED + 2 - per_batch * request.batch_count)
    sources = _sources(registry, request, entry, embeddings)
    images: list[GeneratedImage] = []
    result = None
    with extra_networks(pipe, loras, list(embeddings.items()), allow_pickle=registry.allow_pickle):
        for batch in range(request.batch_count):
            if batch and keep_going is not None and not keep_going():
                break
            step_hook = None
            if on_step is not None:
                step_hook = _bind_batch(on_step, batch)
            params = request.sampling(
                prompt=_as_named(strip_extra_networks(request.prompt), words),
                negative_prompt=None if request.negative_prompt is None else _as_named(
                    strip_extra_networks(request.negative_prompt), words),
                seed=[first_seed + batch * per_batch + j for j in range(per_batch)],
                init_image=init_image,
                mask_image=mask_image,
                **_a1111_clip_skip(request, pipe),
            )  # fmt: skip
            try:
                if hires is None:
                    result = generate(
                        pipe, params, guide=guide, vae_decoder=decoder, callback=step_hook, observe=observe
                    )
                else:  # two passes: draw, upscale, re-draw (A1111's hires fix)
                    result = generate_hires(pipe, params, hires, upscaler_model=upscaler, guide=guide,
                                            vae_decoder=decoder, callback=step_hook, observe=observe)  # fmt: skip
            except StopSampling:  # stopped inside a model call (a hard interrupt): this batch has no image
                break
            for i, image in enumerate(result.images):
                r = recipe(result, i, pipe, sources)
                r["prompt"], r["negative_prompt"] = request.prompt, request.negative_prompt or ""
                images.append(GeneratedImage(image, r, infotext(r, pipe)))
    return RequestResult(
        images=images,
        model=entry,
        pipe=pipe,
        seeds=[g.recipe["seed"] for g in images],
        last=result,
        extra={"skipped_embeddings": skipped} if skipped else {},
    )


def _as_named(prompt: str, names: list[str]) -> str:
    """`prompt` with each folder embedding's name written as its file names it, wherever the prompt has it in
    another case ("mystyle" for MyStyle.pt): A1111 matches names case-insensitively (CLIP lower-cases)."""
    for name in sorted(names, key=len, reverse=True):
        prompt = re.sub(
            rf"(?<!\w){re.escape(name)}(?!\w)", lambda _, name=name: name, prompt, flags=re.IGNORECASE
        )
    return prompt


def _a1111_clip_skip(request: GenerationRequest, pipe: Pipeline) -> dict[str, int]:
    """A1111's `CLIP_stop_at_last_layers` as `clip_skip`: N - 1 on SD 1.x/2.x; on SDXL nothing, as A1111
    leaves SDXL's encoders alone (its `sdxl_clip_l_skip` option, off by default, aside)."""
    n = request.clip_stop_at_last_layers
    if n is None or pipe.is_sdxl:
        return {}
    return {"clip_skip": n - 1}


def _bind_batch(on_step: StepHook, batch: int) -> Callable[[int, int, Any, torch.Tensor], None]:
    def callback(step: int, total: int, timestep: Any, latents: torch.Tensor) -> None:
        on_step(batch, step, total, latents)

    return callback


def _prepare_images(request: GenerationRequest) -> tuple[Any, PIL.Image.Image | None]:
    init = request.init_image
    if init is None or isinstance(init, torch.Tensor):
        if request.mask_image is not None and init is not None:
            return init, request.mask_image  # latents: generate refuses the mask with its own sentence
        return init, None
    init = load_image(init, what="init image")
    if request.mask_image is None:
        return init, None
    mask = load_mask(request.mask_image)  # A1111's order: invert, blur, then resize to the init image
    if request.invert_mask:
        mask = ImageOps.invert(mask)
    if request.mask_blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(request.mask_blur))
    return init, load_mask(mask, size=init.size)


def _sources(
    registry: ModelRegistry,
    request: GenerationRequest,
    entry: ModelEntry,
    embeddings: dict[Path, str | None],
) -> dict[str, Any]:
    """What the recipe records beyond the loop's settings: names where the registry gave names, files
    where the caller gave paths (the CLI), so that `sdlab replay` finds them again. Prompt tags
    (`<lora:...>`, folder embeddings) stay in the recorded prompt and are not repeated."""
    sources: dict[str, Any] = {"model": entry.name}
    for key in ("init_image", "mask_image"):
        value = getattr(request, key)
        if isinstance(value, str | Path):
            sources[key] = str(Path(value).resolve())
    if request.vae_decoder:  # "tiny" (the model's own) stays a name, portable with the model
        ref = request.vae_decoder
        sources["vae_decoder"] = ref if ref == TINY else str(Path(ref).expanduser().resolve())
    if request.mask_image is not None:
        sources["mask_blur"] = request.mask_blur or None
        sources["invert_mask"] = request.invert_mask or None
    if request.loras:
        known = registry.loras()
        sources["lora"] = ",".join(
            f"{ref.name if ref.name in known else Path(ref.name).resolve()}:{ref.weight:g}"
            for ref in request.loras
        )
    files = [path for path, token in embeddings.items() if token is None]
    if files:
        sources["embedding"] = ",".join(str(p.resolve()) for p in files)
    return sources
