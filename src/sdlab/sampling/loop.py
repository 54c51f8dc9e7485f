"""The sampling loop: text-to-image, image-to-image and inpainting in one readable function.

Stable Diffusion in one paragraph: the text encoder turns the prompt into embeddings; starting from
noise (or from a noised input image), the UNet predicts the noise in the latent at each timestep, once
with the prompt and once with the negative (or empty) prompt; classifier-free guidance extrapolates
from the second towards the first; the scheduler turns that prediction into a slightly less noisy
latent; after the last step the VAE decodes the latent into pixels.

`generate` reads as diffusers' pipelines do, in numbered phases. What a call adds around the UNet
(guidance, a guidance interval, a deep cache, a gradient guide) is wrapped into one denoiser
(`sampling.denoisers`); the loop calls it once a step and never branches on those options.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import PIL.Image
import torch
from diffusers.image_processor import VaeImageProcessor

from sdlab.errors import InputError
from sdlab.sampling.conditioning import schedule_conditioning
from sdlab.sampling.denoisers import UNetModel
from sdlab.sampling.gradient_guidance import GradientGuidance, GradientGuide, alpha_bar_at
from sdlab.sampling.guidance import ClassifierFreeGuidance, guided_steps, uses_guidance
from sdlab.sampling.inpainting import fill_latents
from sdlab.sampling.inputs import (
    InitImage,
    output_size,
    prepare_init,
    prepare_inpainting,
    prepare_mask,
    repeat_to,
    seeds_for,
)
from sdlab.sampling.latents import (
    decode_latents,
    encode_images,
    full_precision_vae,
    generators_for,
    guidance_scale_embedding,
    initial_noise,
    predicted_x0,
    start_step,
    tiled_vae,
)
from sdlab.sampling.params import SamplingParams
from sdlab.sampling.schedulers import make_scheduler, scheduler_name_from_config, set_schedule

if TYPE_CHECKING:
    from sdlab.pipeline import Pipeline

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (step, total, timestep, latents)


@dataclass
class StepInfo:
    """What one denoising step computed, for `generate(..., observe=...)` (the lab's views).

    Latent tensors are (B, C, h, w) for the B images of the batch. `sample` is x_t as the UNet saw
    it (variance-preserving); `noise_uncond`/`noise_cond` are the two guidance branches (`noise_uncond`
    None where the step was not guided: no CFG, or outside the guidance interval); `noise_pred` is what the scheduler got (guided, and moved by a gradient
    guide if any); `latents` is the scheduler's result, x_{t-1}.
    """

    step: int
    total: int
    timestep: float
    sample: torch.Tensor
    noise_uncond: torch.Tensor | None
    noise_cond: torch.Tensor
    noise_pred: torch.Tensor
    latents: torch.Tensor
    alpha_bar: float
    prediction_type: str

    def x0(self, model_output: torch.Tensor | None = None) -> torch.Tensor:
        """The clean latent implied by `model_output` (default: `noise_pred`) at this step."""
        output = self.noise_pred if model_output is None else model_output
        return predicted_x0(output, self.sample, self.alpha_bar, self.prediction_type)


class StopSampling(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by a step callback to end the denoising loop early (interrupt, skip).

    The loop decodes the latents it has, as AUTOMATIC1111 does when a job is interrupted, and records
    the number of steps it ran as `settings["stopped_at_step"]`. Raised inside a model call instead (a
    module hook: a hard interrupt, a time limit), it leaves `generate` with no result.
    """


@dataclass
class GenerationResult:
    images: list[PIL.Image.Image]
    pixels: torch.Tensor  # (batch, 3, H, W) in [0, 1], before rounding to 8 bits
    latents: torch.Tensor  # final latents, scaled: a valid `init_image` for the next call
    seeds: list[int]  # seed of each image; image i alone with seeds[i] gives the same image
    prompts: list[str]
    negative_prompts: list[str]
    params: SamplingParams  # what ran: the model's recommendation applied, the size filled in
    unet_evaluations: int = 0  # per image: 2 per guided step, 1 per other step
    stopped_at_step: int | None = None  # steps run, when a callback stopped the loop early
    guide: dict[str, Any] = field(default_factory=dict)  # a gradient guide's recipe (digit, scale)
    hires: dict[str, Any] = field(
        default_factory=dict
    )  # the hires fix's settings (`sampling.hires`), if it ran

    @property
    def settings(self) -> dict[str, Any]:
        """Every resolved setting of the call as the recipe records it (see `SamplingParams.recipe`)."""
        return {**self.params.recipe(), "unet_evaluations": self.unet_evaluations,
                "stopped_at_step": self.stopped_at_step, **self.guide, **self.hires}  # fmt: skip

    def select(self, index: int) -> GenerationResult:
        """Image `index` alone, as a result of its own."""
        i = slice(index, index + 1)
        return GenerationResult(
            self.images[i], self.pixels[i], self.latents[i], self.seeds[i], self.prompts[i],
            self.negative_prompts[i], self.params, self.unet_evaluations, self.stopped_at_step, self.guide,
            self.hires,
        )  # fmt: skip


@torch.no_grad()
def generate(
    pipe: Pipeline,
    prompt: str | list[str] = "",
    negative_prompt: str | list[str] | None = None,
    *,
    guide: GradientGuide | None = None,
    vae_decoder: Any = None,
    callback: StepCallback | None = None,
    observe: Callable[[StepInfo], None] | None = None,
    **params: Any,
) -> GenerationResult:
    """Generate images: text-to-image; image-to-image with `init_image` (an image, a path, or an earlier
    result's `latents`) and `strength` in (0, 1] (default 0.8); inpainting with `mask_image` too (white =
    repaint, strength 1). `params` are `SamplingParams`' fields (diffusers' names), or pass a whole
    `SamplingParams` as `prompt`; the model's recommendation fills what is left out, as a package
    (`SamplingParams.resolve`). `guide` moves each step's predicted clean image along a score's gradient;
    `vae_decoder` (TAESD) decodes the final latents instead of the model's VAE.

    `callback(step, total, timestep, latents)` runs after every step; raising `StopSampling` from it ends
    the loop and decodes the latents so far. `observe(StepInfo)` sees each step's predictions.
    Returns images, pixels (B, 3, H, W) in [0, 1], the final latents and the resolved `params`; raises
    `InputError` (a ValueError) with one sentence for a bad argument.
    """
    # 1. Check inputs and apply the model's recommendation
    if isinstance(prompt, SamplingParams) and (negative_prompt is not None or params):
        raise TypeError("generate takes a SamplingParams alone, or its fields as arguments, not both")
    p = prompt if isinstance(prompt, SamplingParams) else SamplingParams(prompt, negative_prompt, **params)
    p = p.resolve(pipe.recommended, scheduler_name_from_config(pipe.scheduler_config))
    check_unet_conditioning(pipe.unet)
    processor = VaeImageProcessor(vae_scale_factor=pipe.vae_scale_factor)
    init = prepare_init(pipe, p, processor)
    crop = None
    if p.mask_image is not None and init is not None and init.pixels is not None:
        init, crop = prepare_inpainting(pipe, p, init, processor)  # "only masked", masked content
    height, width = output_size(pipe, p, init)
    prompts, negatives = _prompts(p)
    seeds = seeds_for(p.seed, len(prompts))
    generators = generators_for(seeds)
    p = p.replace(height=height, width=width, seed=seeds)
    if pipe.is_sdxl:  # SDXL's size conditioning, recorded as it ran
        p = p.replace(
            original_size=p.original_size or (height, width), target_size=p.target_size or (height, width)
        )

    # 2. Timesteps: image-to-image skips the first (1 - strength) of the schedule
    sched = make_scheduler(p.scheduler, pipe.scheduler_config, inpainting=p.mask_image is not None,
                           timestep_spacing=p.timestep_spacing, sigma_schedule=p.sigma_schedule)  # fmt: skip
    set_schedule(sched, p.num_inference_steps, p.sigma_schedule, pipe.device, sdxl=pipe.is_sdxl)
    steps = sched.num_inference_steps or p.num_inference_steps  # A1111's DDIM schedule type may run one more
    first = start_step(steps, p.strength) if init is not None else 0
    timesteps = sched.timesteps[first * sched.order :]
    if first > 0 and hasattr(sched, "set_begin_index"):
        sched.set_begin_index(first * sched.order)

    # 3. Encode the prompts at each step (A1111's prompt editing, AND); the unconditional branch is the
    #    negative prompt (or "")
    do_cfg = uses_guidance(pipe.unet, p.guidance_scale)
    cond, uncond = schedule_conditioning(
        pipe, p, prompts, negatives if do_cfg else None, len(timesteps), order=sched.order
    )

    # 4. Latents: pure noise, or the init image's latents noised to the first timestep
    with tiled_vae(pipe.vae, p.vae_tiling):
        latents, noise, image_latents = _initial_latents(pipe, p, init, sched, timesteps, generators)

    # 5. Inpainting: the mask at latent resolution; 9-channel UNets also see the masked image's latents
    mask = masked_latents = None
    if p.mask_image is not None:
        mask, masked_latents = prepare_mask(pipe, p, init, (height, width), len(prompts), generators, crop)
        if (
            p.inpainting_fill in ("latent noise", "latent nothing")
            and image_latents is not None
            and first > 0
        ):
            base = fill_latents(image_latents, noise, mask, p.inpainting_fill)  # A1111's, before noising
            latents = sched.add_noise(base, noise, timesteps[:1].repeat(len(prompts)))
    step_generators = (
        generators_for([s + p.eta_noise_seed_delta for s in seeds]) if p.eta_noise_seed_delta else generators
    )
    step = SchedulerStep(sched, _step_kwargs(sched, step_generators, p.eta))
    if mask is not None and masked_latents is None:  # a 4-channel UNet: the known region is put back
        step = KnownRegion(step, image_latents, noise, mask, timesteps)

    # 6. The denoiser: the UNet with this call's conditioning, wrapped in guidance and the guide
    inpainting = None if masked_latents is None else (mask, masked_latents)
    timestep_cond = _guidance_embedding(pipe, p.guidance_scale, len(prompts))
    unet = UNetModel(pipe.unet, timestep_cond=timestep_cond, inpainting=inpainting, deep_cache=p.deep_cache,
                     keep_outputs="cudagraphs" in (pipe.compiled or ""))  # fmt: skip
    guided = guided_steps(sched.alphas_cumprod, timesteps, p.guidance_interval)
    cfg = ClassifierFreeGuidance(unet, cond, uncond, p.guidance_scale, guided, p.guidance_rescale)
    prediction_type = sched.config.get("prediction_type", "epsilon")
    denoiser = (
        cfg
        if guide is None
        else GradientGuidance(cfg, guide, pipe.vae, sched.alphas_cumprod, prediction_type)
    )

    # 7. Denoising loop
    stopped_at = None
    for i, t in enumerate(timesteps):
        sample = sched.scale_model_input(latents, t)
        out = denoiser(sample, t, i)
        latents = step(out.noise_pred, t, latents, i)
        if observe is not None:
            observe(StepInfo(i, len(timesteps), float(t), sample, out.noise_uncond, out.noise_cond, out.noise_pred,
                             latents, alpha_bar_at(sched.alphas_cumprod, t), prediction_type))  # fmt: skip
        if callback is not None and _stops(callback, i, len(timesteps), t, latents):
            stopped_at = i + 1
            break

    # 8. Decode
    decoder = pipe.vae if vae_decoder is None else vae_decoder
    with full_precision_vae(decoder), tiled_vae(decoder, p.vae_tiling):
        pixels = processor.postprocess(decode_latents(decoder, latents.to(decoder.dtype)), output_type="pt")
    images = processor.numpy_to_pil(processor.pt_to_numpy(pixels))
    if crop is not None:  # "only masked": each result pasted back into the original
        images = crop.paste(processor, images)
        pixels = processor.numpy_to_pt(processor.pil_to_numpy(images))
    return GenerationResult(
        images=images,
        pixels=pixels.float().cpu(), latents=latents, seeds=seeds, prompts=prompts, negative_prompts=negatives,
        params=p, unet_evaluations=cfg.evaluations, stopped_at_step=stopped_at,
        guide=guide.recipe if guide is not None else {},
    )  # fmt: skip


class SchedulerStep:
    """`step(noise_pred, t, latents, i) -> x_{t-1}`: the scheduler's step with this call's `eta` and generators."""

    def __init__(self, sched: Any, kwargs: dict[str, Any]) -> None:
        self.sched, self.kwargs = sched, kwargs

    def __call__(
        self, noise_pred: torch.Tensor, t: torch.Tensor, latents: torch.Tensor, i: int
    ) -> torch.Tensor:
        return self.sched.step(noise_pred, t, latents, **self.kwargs, return_dict=False)[0]


class KnownRegion:
    """A step after which a 4-channel UNet's latents outside the mask are put back on the init image's own
    noising path to the next timestep (RePaint-style blend; diffusers' `StableDiffusionInpaintPipeline`
    does the same for 4-channel UNets)."""

    def __init__(self, step: SchedulerStep, image_latents: torch.Tensor, noise: torch.Tensor,
                 mask: torch.Tensor, timesteps: torch.Tensor) -> None:  # fmt: skip
        self.step, self.image_latents, self.noise, self.mask = step, image_latents, noise, mask
        self.timesteps = timesteps

    def __call__(
        self, noise_pred: torch.Tensor, t: torch.Tensor, latents: torch.Tensor, i: int
    ) -> torch.Tensor:
        latents = self.step(noise_pred, t, latents, i)
        known = self.image_latents
        if i < len(self.timesteps) - 1:
            known = self.step.sched.add_noise(self.image_latents, self.noise, self.timesteps[i + 1 : i + 2])
        return (1 - self.mask) * known + self.mask * latents


def _stops(callback: StepCallback, i: int, total: int, t: torch.Tensor, latents: torch.Tensor) -> bool:
    """Run the step callback; True when it raised `StopSampling`."""
    try:
        callback(i, total, t, latents)
    except StopSampling:
        return True
    return False


def _prompts(p: SamplingParams) -> tuple[list[str], list[str]]:
    """The prompt and negative prompt of every image of the batch (each prompt num_images_per_prompt times)."""
    prompts = [p.prompt] if isinstance(p.prompt, str) else list(p.prompt)
    negative = p.negative_prompt
    negatives = [negative or ""] * len(prompts) if not isinstance(negative, list) else list(negative)
    if len(negatives) != len(prompts):
        raise InputError(
            f"got {len(negatives)} negative prompts for {len(prompts)} prompts; give one per prompt, or a single one"
        )
    n = p.num_images_per_prompt
    return [x for x in prompts for _ in range(n)], [x for x in negatives for _ in range(n)]


def _initial_latents(
    pipe: Pipeline, p: SamplingParams, init: InitImage | None, sched: Any, timesteps: torch.Tensor,
    generators: list[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """(latents to start from, the noise drawn, the init image's latents or None), as diffusers'
    img2img and inpainting pipelines' `prepare_latents`: the image is encoded before the noise is drawn."""
    batch_size, factor = len(generators), pipe.vae_scale_factor
    shape = (batch_size, pipe.vae.config.latent_channels, p.height // factor, p.width // factor)
    image_latents = None
    inpainting_unet_from_noise = p.mask_image is not None and pipe.is_inpainting_unet and p.strength == 1.0
    if init is not None and not inpainting_unet_from_noise:
        known = init.latents
        if known is None:
            pixels = repeat_to(init.pixels, batch_size).to(pipe.device, pipe.dtype)
            known = encode_images(pipe.vae, pixels, generators)
        image_latents = repeat_to(known, batch_size).to(pipe.device, pipe.dtype)
    noise = initial_noise(shape, generators, pipe.device, pipe.dtype)
    if init is None or (p.mask_image is not None and p.strength == 1.0):
        return noise * sched.init_noise_sigma, noise, image_latents
    return sched.add_noise(image_latents, noise, timesteps[:1].repeat(batch_size)), noise, image_latents


def _guidance_embedding(pipe: Pipeline, guidance_scale: float, batch_size: int) -> torch.Tensor | None:
    """A guidance-distilled (LCM) UNet is told the guidance scale as an embedding; others get None."""
    dim = pipe.unet.config.time_cond_proj_dim
    if dim is None:
        return None
    w = torch.full((batch_size,), guidance_scale - 1.0)
    return guidance_scale_embedding(w, dim).to(pipe.device, pipe.dtype)


def check_unet_conditioning(unet: Any) -> None:
    """Refuse, with one sentence, a UNet that needs conditioning the loop does not supply.

    Supplied: text embeddings, SDXL's pooled text and size embeddings ("text_time"), and the
    guidance-scale embedding of guidance-distilled (LCM) UNets.
    Not supplied: class labels (SD's x4 upscaler, unCLIP) and other added embeddings (Kandinsky's, IP's).
    """
    config = unet.config
    if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
        raise InputError(
            f"this UNet expects class labels (class_embed_type {config.get('class_embed_type')!r}), as SD's x4 "
            "upscaler and unCLIP do; sdlab generates with SD 1.x/2.x and SDXL text-to-image UNets"
        )
    if config.get("addition_embed_type") not in (None, "text_time"):
        raise InputError(
            f"this UNet expects added conditioning of type {config.get('addition_embed_type')!r}; sdlab generates "
            "with SD 1.x/2.x and SDXL text-to-image UNets"
        )
    if config.get("encoder_hid_dim_type") is not None:
        raise InputError(
            f"this UNet projects its conditioning itself (encoder_hid_dim_type "
            f"{config.get('encoder_hid_dim_type')!r}); sdlab generates with SD 1.x/2.x and SDXL text-to-image UNets"
        )


def _step_kwargs(sched: Any, generators: list[torch.Generator], eta: float) -> dict[str, Any]:
    """`eta` for DDIM, per-image generators for the stochastic samplers (Euler a, DDPM, LCM)."""
    params = inspect.signature(sched.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generators
    return kwargs
