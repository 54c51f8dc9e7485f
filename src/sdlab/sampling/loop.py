"""The sampling loop: text-to-image, image-to-image and inpainting in one readable function.

Stable Diffusion in one paragraph: the text encoder turns the prompt into embeddings; starting from
noise (or from a noised input image), the UNet predicts the noise in the latent at each timestep, once
with the prompt and once with the negative (or empty) prompt; classifier-free guidance extrapolates
from the second towards the first; the scheduler turns that prediction into a slightly less noisy
latent; after the last step the VAE decodes the latent into pixels.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import PIL.Image
import torch
from diffusers.image_processor import VaeImageProcessor

from sdlab.errors import InputError
from sdlab.images import load_image, load_mask
from sdlab.prompts import count_chunks, encode_prompts
from sdlab.sampling.deep_cache import DeepCache, check_interval
from sdlab.sampling.gradient_guidance import GradientGuide, alpha_bar_at, guide_prediction
from sdlab.sampling.latents import (
    decode_latents,
    encode_images,
    generators_for,
    guidance_scale_embedding,
    guided_noise,
    initial_noise,
    predicted_x0,
    rescale_guided_noise,
    start_step,
)
from sdlab.sampling.schedulers import make_scheduler, scheduler_name_from_config

if TYPE_CHECKING:
    from sdlab.pipeline import Pipeline

MAX_SIDE = 4096  # pixels; beyond this a request is a typo, not an image
MAX_SEED = 2**32 - 1  # seeds are 0 .. 2**32 - 1, as in AUTOMATIC1111 and InvokeAI
ImageInput = str | Path | PIL.Image.Image | torch.Tensor
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
    the number of steps it ran as `settings["stopped_at_step"]`.
    """


@dataclass
class GenerationResult:
    images: list[PIL.Image.Image]
    pixels: torch.Tensor  # (batch, 3, H, W) in [0, 1], before rounding to 8 bits
    latents: torch.Tensor  # final latents, scaled: a valid `init_image` for the next call
    seeds: list[int]  # seed of each image; image i alone with seeds[i] gives the same image
    prompts: list[str]
    negative_prompts: list[str]
    settings: dict[str, Any] = field(default_factory=dict)  # every resolved option of the call

    def select(self, index: int) -> GenerationResult:
        """Image `index` alone, as a result of its own."""
        i = slice(index, index + 1)
        return GenerationResult(
            images=self.images[i],
            pixels=self.pixels[i],
            latents=self.latents[i],
            seeds=self.seeds[i],
            prompts=self.prompts[i],
            negative_prompts=self.negative_prompts[i],
            settings=dict(self.settings),
        )


@torch.no_grad()
def generate(
    pipe: Pipeline,
    prompt: str | list[str] = "",
    negative_prompt: str | list[str] | None = None,
    *,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    guidance_rescale: float = 0.0,
    guidance_interval: tuple[float, float | None] | None = None,
    scheduler: str | None = None,
    height: int | None = None,
    width: int | None = None,
    num_images_per_prompt: int = 1,
    seed: int | list[int] | None = None,
    init_image: ImageInput | None = None,
    strength: float | None = None,
    mask_image: str | Path | PIL.Image.Image | None = None,
    eta: float = 0.0,
    guide: GradientGuide | None = None,
    vae_decoder: Any = None,
    deep_cache: int | None = None,
    callback: StepCallback | None = None,
    observe: Callable[[StepInfo], None] | None = None,
) -> GenerationResult:
    """Generate images; see the README for every argument. Bad arguments raise `InputError` (a ValueError).

    - text-to-image: `prompt` (+ `negative_prompt`), guided when `guidance_scale > 1`;
    - image-to-image: `init_image` (an image, a path, or the `latents` of an earlier result) and
      `strength` in (0, 1]: the share of the schedule that is re-run (default 0.8);
    - inpainting: `init_image` + `mask_image` (white = repaint), default strength 1.0;
    - gradient guidance: `guide` moves each step's predicted clean image along a score's gradient;
    - `vae_decoder`: a tiny decoder (`AutoencoderTiny`, TAESD) that decodes the final latents instead of
      the model's VAE (see `sdlab.loading.decoder`);
    - `deep_cache=N`: run the UNet whole every N steps and only its shallow path in between, reusing
      the deep features (DeepCache, Ma et al. 2024; see `sdlab.sampling.deep_cache`); 1: off; None: the
      model's recommendation (`sdlab.json`), else off;
    - `guidance_interval=(lo, hi)`: classifier-free guidance only at steps whose noise level
      sigma = sqrt((1 - alpha_bar_t) / alpha_bar_t) lies in (lo, hi] (hi None: unbounded); the other
      steps run one conditional UNet pass instead of two (Kynkaenniemi et al., NeurIPS 2024).
    `callback(step, total, timestep, latents)` runs after every step; raising `StopSampling` from it
    ends the loop there and decodes the latents so far. `observe(StepInfo)` sees each step's
    predictions (both guidance branches, the predicted clean latent) for inspection.
    Steps, guidance scale, guidance interval and scheduler default to the model's recommendation
    (`pipe.sampling_defaults`), else 30 steps, 7.5, every step and the model's scheduler config; the
    model's interval applies only with the model's guidance scale (left out, or equal to it: they were
    chosen together).
    """
    # 1. Check inputs and resolve defaults
    if num_inference_steps is None:
        num_inference_steps = pipe.sampling_defaults.get("num_inference_steps", 30)
    if guidance_interval is None:  # the model's interval was chosen with its CFG scale: it comes only with it
        model_scale = pipe.sampling_defaults.get("guidance_scale")
        with_model_scale = guidance_scale is None or guidance_scale == model_scale
        default = pipe.sampling_defaults.get("guidance_interval") if with_model_scale else None
        guidance_interval = default or (0.0, None)
    if guidance_scale is None:
        guidance_scale = pipe.sampling_defaults.get("guidance_scale", 7.5)
    interval = check_guidance_interval(guidance_interval)
    if deep_cache is None:
        deep_cache = pipe.sampling_defaults.get("deep_cache", 1)
    scheduler = scheduler or pipe.sampling_defaults.get("scheduler")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    negatives = _negative_prompts(negative_prompt, len(prompts))
    check_numbers(num_inference_steps, guidance_scale, guidance_rescale, num_images_per_prompt, eta)
    if mask_image is not None and init_image is None:
        raise InputError("a mask needs an init image to inpaint; pass init_image (--init-image) too")
    if strength is not None and init_image is None:
        raise InputError("strength applies only to image-to-image; pass init_image (--init-image) too")
    if strength is None:
        strength = 1.0 if mask_image is not None else 0.8 if init_image is not None else 1.0
    if not (0 < strength <= 1):
        raise InputError(f"strength must be in (0, 1], got {strength}")
    if init_image is not None and int(num_inference_steps * strength) < 1:
        raise InputError(
            f"steps x strength = {num_inference_steps} x {strength} runs no denoising step; "
            "raise the steps or the strength so that their product is at least 1"
        )
    device, dtype = pipe.device, pipe.dtype
    factor = pipe.vae_scale_factor
    image_processor = VaeImageProcessor(vae_scale_factor=factor)
    init_pixels, init_latents, init_size = _prepare_init(pipe, init_image, height, width, image_processor)
    if init_latents is not None:
        height, width = init_latents.shape[2] * factor, init_latents.shape[3] * factor
    elif init_pixels is not None:
        height, width = init_pixels.shape[2], init_pixels.shape[3]
    height = pipe.default_size if height is None else height
    width = pipe.default_size if width is None else width
    _check_size(height, width, factor)
    batch_size = len(prompts) * num_images_per_prompt
    seeds = _seeds(seed, batch_size)
    generators = generators_for(seeds)
    scheduler_name = scheduler or scheduler_name_from_config(pipe.scheduler_config)
    sched = make_scheduler(scheduler_name, pipe.scheduler_config, inpainting=mask_image is not None)
    check_unet_conditioning(pipe.unet)
    distilled = pipe.unet.config.time_cond_proj_dim is not None  # guidance baked in (LCM): one pass
    do_cfg = guidance_scale > 1 and not distilled

    # 2. Encode the prompts; the unconditional branch is the negative prompt (or "")
    prompts_b = [p for p in prompts for _ in range(num_images_per_prompt)]
    negatives_b = [n for n in negatives for _ in range(num_images_per_prompt)]
    # each distinct text is encoded once and repeated, as diffusers does: -n 16 is one encoder pass, not 32
    texts = prompts_b + (negatives_b if do_cfg else [])
    distinct = list(dict.fromkeys(texts))
    chunks = count_chunks(pipe.tokenizer, distinct)
    encoded = encode_prompts(pipe.tokenizer, pipe.text_encoder, distinct, chunks).to(dtype)
    embeds = encoded[[distinct.index(t) for t in prompts_b]]
    if do_cfg:
        embeds = torch.cat([encoded[[distinct.index(n) for n in negatives_b]], embeds])

    # 3. Timesteps: image-to-image skips the first (1 - strength) of the schedule
    sched.set_timesteps(num_inference_steps, device=device)
    first = start_step(num_inference_steps, strength) if init_image is not None else 0
    timesteps = sched.timesteps[first * sched.order :]
    if first > 0 and hasattr(sched, "set_begin_index"):
        sched.set_begin_index(first * sched.order)

    # 4. Latents: pure noise, or the init image's latents noised to the first timestep
    latent_shape = (batch_size, pipe.vae.config.latent_channels, height // factor, width // factor)
    image_latents = None
    needs_image_latents = init_image is not None and (mask_image is None or not pipe.is_inpainting_unet)
    if needs_image_latents or (init_image is not None and strength < 1):
        if init_latents is None:
            pixels_b = _repeat_to(init_pixels, batch_size).to(device, dtype)
            init_latents = encode_images(pipe.vae, pixels_b, generators)
        image_latents = _repeat_to(init_latents, batch_size).to(device, dtype)
    noise = initial_noise(latent_shape, generators, device, dtype)
    if init_image is None or (mask_image is not None and strength == 1.0):
        latents = noise * sched.init_noise_sigma
    else:
        latents = sched.add_noise(image_latents, noise, timesteps[:1].repeat(batch_size))

    # 5. Inpainting: the mask at latent resolution; 9-channel UNets also see the masked image's latents
    mask = masked_latents = None
    if mask_image is not None:
        mask, masked_latents = _prepare_mask(
            pipe, mask_image, init_pixels, init_size, height, width, batch_size, generators
        )

    # 6. Denoising loop; a guidance-distilled UNet is told the guidance scale as an embedding
    timestep_cond = None
    if distilled:
        w = torch.full((batch_size,), guidance_scale - 1.0)
        timestep_cond = guidance_scale_embedding(w, pipe.unet.config.time_cond_proj_dim).to(device, dtype)
    stopped_at = None
    step_kwargs = _step_kwargs(sched, generators, eta)
    prediction_type = sched.config.get("prediction_type", "epsilon")
    guided_at = (
        guided_steps(sched.alphas_cumprod, timesteps, interval) if do_cfg else [False] * len(timesteps)
    )
    unet_passes = 0  # UNet evaluations per image: 2 per guided step, 1 per other step
    cache = DeepCache(pipe.unet, deep_cache) if check_interval(deep_cache) != 1 else None
    for i, t in enumerate(timesteps):
        guided = guided_at[i]
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = sched.scale_model_input(model_input, t)
        if masked_latents is not None:
            extra = [mask, masked_latents]
            model_input = torch.cat(
                [model_input] + [torch.cat([x] * 2) if guided else x for x in extra], dim=1
            )
        # outside the interval: the conditional half of the embeddings, one pass
        step_embeds = embeds if guided or not do_cfg else embeds[batch_size:]
        if cache is None:
            noise_pred = pipe.unet(
                model_input,
                t,
                encoder_hidden_states=step_embeds,
                timestep_cond=timestep_cond,
                return_dict=False,
            )[0]
        else:
            noise_pred = cache(i, model_input, t, step_embeds, timestep_cond)
        unet_passes += 2 if guided else 1
        noise_uncond, noise_cond = None, noise_pred
        if guided:
            noise_uncond, noise_cond = noise_pred.chunk(2)
            noise_pred = guided_noise(noise_uncond, noise_cond, guidance_scale)
            if guidance_rescale > 0:
                noise_pred = rescale_guided_noise(noise_pred, noise_cond, guidance_rescale)
        if guide is not None:
            sample = model_input[: len(latents), : latents.shape[1]]  # x_t, variance-preserving
            alpha_bar = alpha_bar_at(sched.alphas_cumprod, t)
            noise_pred = guide_prediction(guide, pipe.vae, noise_pred, sample, alpha_bar, prediction_type)
        latents = sched.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
        if observe is not None:
            sample = model_input[: len(latents), : latents.shape[1]]
            alpha_bar = alpha_bar_at(sched.alphas_cumprod, t)
            observe(StepInfo(i, len(timesteps), float(t), sample, noise_uncond, noise_cond, noise_pred,
                             latents, alpha_bar, prediction_type))  # fmt: skip
        if mask is not None and masked_latents is None:
            # 4-channel UNet: keep the known region on the image's own noising path (RePaint-style blend)
            known = image_latents
            if i < len(timesteps) - 1:
                known = sched.add_noise(image_latents, noise, timesteps[i + 1 : i + 2])
            latents = (1 - mask) * known + mask * latents
        if callback is not None:
            try:
                callback(i, len(timesteps), t, latents)
            except StopSampling:
                stopped_at = i + 1
                break

    # 7. Decode
    decoder = pipe.vae if vae_decoder is None else vae_decoder
    pixels = image_processor.postprocess(decode_latents(decoder, latents.to(decoder.dtype)), output_type="pt")
    settings = {
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "guidance_rescale": guidance_rescale,
        "guidance_interval": [interval[0], None if math.isinf(interval[1]) else interval[1]],
        "scheduler": scheduler_name,
        "height": height,
        "width": width,
        "strength": strength if init_image is not None else None,
        "eta": eta,
        "stopped_at_step": stopped_at,
        "unet_evaluations": unet_passes,
        # recorded when on, and when off against the model's recommendation (so a replay turns it off too)
        "deep_cache": deep_cache
        if cache is not None or pipe.sampling_defaults.get("deep_cache", 1) != 1
        else None,
        **(guide.recipe if guide is not None else {}),
    }
    return GenerationResult(
        images=image_processor.numpy_to_pil(image_processor.pt_to_numpy(pixels)),
        pixels=pixels.float().cpu(),
        latents=latents,
        seeds=seeds,
        prompts=prompts_b,
        negative_prompts=negatives_b,
        settings=settings,
    )


def _negative_prompts(negative_prompt: str | list[str] | None, n: int) -> list[str]:
    if negative_prompt is None:
        return [""] * n
    if isinstance(negative_prompt, str):
        return [negative_prompt] * n
    if len(negative_prompt) != n:
        raise InputError(
            f"got {len(negative_prompt)} negative prompts for {n} prompts; give one per prompt, or a single one"
        )
    return list(negative_prompt)


def check_numbers(steps: int, guidance: float, rescale: float, per_prompt: int, eta: float) -> None:
    """Raise `InputError` for a step count, guidance scale, rescale, batch size or eta out of range."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise InputError(f"num_inference_steps (--steps) must be an integer >= 1, got {steps!r}")
    if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not math.isfinite(guidance):
        raise InputError(f"guidance_scale (--guidance-scale) must be a finite number, got {guidance}")
    if not isinstance(rescale, int | float) or not (0 <= rescale <= 1):
        raise InputError(f"guidance_rescale must be in [0, 1], got {rescale}")
    if not isinstance(per_prompt, int) or per_prompt < 1:
        raise InputError(f"num_images_per_prompt (--num-images) must be an integer >= 1, got {per_prompt!r}")
    if not isinstance(eta, int | float) or not (0 <= eta <= 1):
        raise InputError(f"eta must be in [0, 1], got {eta}")


def check_guidance_interval(interval: Any) -> tuple[float, float]:
    """(lo, hi) as floats, hi None -> inf; raises `InputError` unless 0 <= lo < hi."""
    try:
        lo, hi = interval
        lo, hi = float(lo), math.inf if hi is None else float(hi)
    except (TypeError, ValueError):
        raise InputError(
            f"guidance_interval (--guidance-interval) must be two noise levels LO,HI, got {interval!r}"
        ) from None
    if math.isnan(lo) or math.isnan(hi) or not 0 <= lo < hi:
        raise InputError(f"guidance_interval needs 0 <= LO < HI (noise levels sigma), got {lo}, {hi}")
    return lo, hi


def guided_steps(alphas_cumprod: torch.Tensor, timesteps: Any, interval: Any) -> list[bool]:
    """For each timestep, whether its noise level sigma = sqrt((1 - alpha_bar) / alpha_bar) lies in the
    interval (lo, hi] and so gets classifier-free guidance (`InputError` for a bad interval)."""
    lo, hi = check_guidance_interval(interval)
    guided = []
    for t in timesteps:
        alpha_bar = alpha_bar_at(alphas_cumprod, t)
        sigma = (
            math.inf if alpha_bar <= 0 else math.sqrt((1 - alpha_bar) / alpha_bar)
        )  # zero terminal SNR: inf
        guided.append(lo < sigma <= hi)
    return guided


def planned_unet_evaluations(
    pipe: Pipeline, scheduler: str, steps: int, guidance_scale: float, interval: Any = (0.0, None)
) -> int:
    """UNet evaluations per image of a text-to-image run, counted as `generate` will spend them: two
    per guided step, one per other step (PNDM's first step counts twice: it runs steps + 1)."""
    sched = make_scheduler(scheduler, pipe.scheduler_config)
    sched.set_timesteps(steps)
    do_cfg = guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
    guided = guided_steps(sched.alphas_cumprod, sched.timesteps, interval)
    return sum(2 if do_cfg and g else 1 for g in guided)


def check_unet_conditioning(unet: Any) -> None:
    """Refuse, with one sentence, a UNet that needs conditioning the loop does not supply.

    Supplied: text embeddings, and the guidance-scale embedding of guidance-distilled (LCM) UNets.
    Not supplied: class labels (SD's x4 upscaler, unCLIP) and added embeddings (SDXL's text_time).
    """
    config = unet.config
    if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
        raise InputError(
            f"this UNet expects class labels (class_embed_type {config.get('class_embed_type')!r}), as SD's x4 "
            "upscaler and unCLIP do; sdlab generates with SD 1.x/2.x text-to-image UNets"
        )
    if config.get("addition_embed_type") is not None:
        raise InputError(
            f"this UNet expects added conditioning (addition_embed_type {config.get('addition_embed_type')!r}, "
            "e.g. SDXL's text_time); sdlab generates with SD 1.x/2.x text-to-image UNets"
        )
    if config.get("encoder_hid_dim_type") is not None:
        raise InputError(
            f"this UNet projects its conditioning itself (encoder_hid_dim_type "
            f"{config.get('encoder_hid_dim_type')!r}); sdlab generates with SD 1.x/2.x text-to-image UNets"
        )


def _check_size(height: int, width: int, factor: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % factor:
            raise InputError(
                f"{name} must be a positive multiple of {factor} (the VAE's factor), got {value!r}"
            )
        if value > MAX_SIDE:
            raise InputError(f"{name} {value} is larger than the maximum of {MAX_SIDE} pixels")


def _seeds(seed: int | list[int] | None, batch_size: int) -> list[int]:
    """Image i gets `seed + i`; a list gives each image's seed; None draws one at random."""
    if seed is None:
        seed = random.SystemRandom().randrange(MAX_SEED + 1 - batch_size)
    if isinstance(seed, int) and not isinstance(seed, bool):
        seeds = [seed + i for i in range(batch_size)]
    else:
        seeds = list(seed)
        if len(seeds) != batch_size:
            raise InputError(f"got {len(seeds)} seeds for a batch of {batch_size} images")
    for s in seeds:
        if not isinstance(s, int) or isinstance(s, bool) or not (0 <= s <= MAX_SEED):
            raise InputError(f"a seed must be an integer from 0 to {MAX_SEED} (2**32 - 1), got {s!r}")
    return seeds


def _prepare_init(
    pipe: Pipeline,
    init_image: ImageInput | None,
    height: int | None,
    width: int | None,
    processor: VaeImageProcessor,
) -> tuple[torch.Tensor | None, torch.Tensor | None, tuple[int, int] | None]:
    """(pixels in [-1, 1], None, (W, H) as given) for an image; (None, latents, None) for earlier latents.

    Images always arrive as 3-channel RGB (alpha composited by `load_image`), so only a tensor with the
    VAE's latent channel count is ever taken for latents.
    """
    if init_image is None:
        return None, None, None
    if isinstance(init_image, torch.Tensor):
        x = init_image if init_image.ndim == 4 else init_image.unsqueeze(0)
        if x.shape[1] == pipe.vae.config.latent_channels:
            return None, x, None
        if x.shape[1] != 3:
            raise InputError(
                f"an init_image tensor must have 3 channels (an image in [0, 1]) or "
                f"{pipe.vae.config.latent_channels} (latents), got shape {tuple(x.shape)}"
            )
        return processor.preprocess(x, height=height, width=width), None, (x.shape[3], x.shape[2])
    image = load_image(init_image, what="init image")
    return processor.preprocess(image, height=height, width=width), None, image.size


def _prepare_mask(
    pipe: Pipeline,
    mask_image: str | Path | PIL.Image.Image,
    init_pixels: torch.Tensor | None,
    init_size: tuple[int, int] | None,
    height: int,
    width: int,
    batch_size: int,
    generators: list[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if init_pixels is None:
        raise InputError("inpainting needs an init image, not latents, to know which pixels to keep")
    mask = load_mask(mask_image, size=init_size)
    processor = VaeImageProcessor(
        vae_scale_factor=pipe.vae_scale_factor,
        do_normalize=False,
        do_binarize=True,
        do_convert_grayscale=True,
    )
    mask = processor.preprocess(mask, height=height, width=width)  # (1, 1, H, W) of 0/1
    masked_latents = None
    if pipe.is_inpainting_unet:
        masked = (init_pixels * (mask < 0.5)).to(pipe.device, pipe.dtype)
        masked_latents = encode_images(pipe.vae, _repeat_to(masked, batch_size), generators)
    latent_size = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    small = torch.nn.functional.interpolate(mask, size=latent_size)
    return _repeat_to(small, batch_size).to(pipe.device, pipe.dtype), masked_latents


def _repeat_to(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    if x.shape[0] == batch_size:
        return x
    if batch_size % x.shape[0]:
        raise InputError(f"cannot spread {x.shape[0]} init images over a batch of {batch_size}")
    return x.repeat(batch_size // x.shape[0], 1, 1, 1)


def _step_kwargs(sched: Any, generators: list[torch.Generator], eta: float) -> dict[str, Any]:
    """`eta` for DDIM, per-image generators for the stochastic samplers (Euler a, DDPM, LCM)."""
    params = inspect.signature(sched.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generators
    return kwargs
