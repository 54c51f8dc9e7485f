"""How to sample, described once: `SamplingParams`, its checks, and the model's recommendation.

Every front end builds one `SamplingParams` (the CLI's flags, the HTTP API's A1111 fields, the web UI's
fields, `sdlab eval`, replay, the prompts file, the X/Y plot and the lab) and the sampling loop takes it.
Field names are diffusers' argument names. Each field carries, in its metadata, its CLI help and flag
aliases (`sdlab.options.option`), its AUTOMATIC1111 API field (`a1111`) and its infotext key
(`infotext`), so the flag, the API mapping, the PNG recipe and the infotext are all read from here.

A model's recommendation (its `sdlab.json`) is a *package*: scheduler, timestep spacing, steps and CFG
scale (and a sigma schedule), plus the approximations that were tuned for exactly those (a guidance interval, a deep cache).
`resolve` applies it: fields left out take the package's values; and when the caller sets the scheduler,
the spacing, the steps or the CFG scale to something else, the approximations are dropped unless the
caller asks for them too. A `preset` (a few-step model's card settings, `sdlab.sampling.presets`)
replaces the model's recommendation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdlab.errors import InputError
from sdlab.options import option
from sdlab.sampling.presets import PRESETS
from sdlab.sampling.schedulers import SCHEDULERS, SIGMA_SCHEDULES, TIMESTEP_SPACINGS

if TYPE_CHECKING:
    import PIL.Image
    import torch

    ImageInput = str | Path | PIL.Image.Image | bytes | torch.Tensor
else:  # this module is read by `sdlab --help`, which imports no torch
    ImageInput = Any

MAX_SIDE = 4096  # pixels; beyond this a request is a typo, not an image
MAX_SEED = 2**32 - 1  # seeds are 0 .. 2**32 - 1, as in AUTOMATIC1111 and InvokeAI
MAX_STEPS = 10_000
# where a model recommends nothing: diffusers' StableDiffusionPipeline defaults would be 50 steps; sdlab has
# always used 30, and guidance everywhere, the whole UNet at every step
FALLBACK_STEPS = 30
FALLBACK_GUIDANCE_SCALE = 7.5
EVERY_STEP = (0.0, None)  # a guidance interval that guides every step
DEFAULT_STRENGTH = 0.8  # image-to-image's share of the schedule re-run (diffusers' default); inpainting: 1
# the model's recommendation: the base settings, and the approximations tuned for them
PACKAGE_BASE = ("scheduler", "timestep_spacing", "sigma_schedule", "num_inference_steps", "guidance_scale")
PACKAGE_APPROXIMATIONS = ("guidance_interval", "deep_cache")
PACKAGE = PACKAGE_BASE + PACKAGE_APPROXIMATIONS
# SDXL's micro-conditioning (pixels, (height, width) / (top, left)); the negative ones default to the positive
SDXL_PAIRS = (
    "original_size", "crops_coords_top_left", "target_size",
    "negative_original_size", "negative_crops_coords_top_left", "negative_target_size",
)  # fmt: skip
SDXL_ONLY = (*SDXL_PAIRS, "aesthetic_score", "negative_aesthetic_score")
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")  # A1111's inpainting_fill 0-3
MAX_CONDITIONING_SIZE = 16_384  # pixels: SDXL saw original sizes up to about 4096; beyond 4x that is a typo


@dataclass(frozen=True)
class SamplingParams:
    """The arguments of one call of the sampling loop (diffusers' names). None: the model's recommendation.

    Images (`init_image`, `mask_image`) may be paths, PIL images, the bytes of an encoded file, or for
    `init_image` the latents (B, 4, h, w) of an earlier result. `seed` is image 0's seed (image i gets
    seed + i) or one seed per image. Use `validate()` for the checks that need no model and
    `resolve(...)` for the model's recommendation.
    """

    prompt: str | list[str] = option(
        "", 'what to draw; (word:1.3) emphasis, [word] de-emphasis, BREAK ("" for none)', a1111="prompt"
    )
    negative_prompt: str | list[str] | None = option(
        None, "what to steer away from: replaces the empty prompt in guidance", a1111="negative_prompt"
    )
    preset: str | None = option(
        None, "a few-step model's card settings (sampler, spacing, steps, CFG) in place of the model's: "
        + ", ".join(PRESETS), choices=list(PRESETS), metavar="NAME",
    )  # fmt: skip
    scheduler: str | None = option(
        None, "sampler (default: the model's own)", choices=list(SCHEDULERS), metavar="NAME"
    )
    timestep_spacing: str | None = option(
        None, "how the steps spread over the noise schedule (diffusers' timestep_spacing): leading, linspace, "
        "or trailing, A1111's 'SGM Uniform', which SDXL-Turbo and Lightning prescribe (default: the model's)",
        choices=list(TIMESTEP_SPACINGS), metavar="|".join(TIMESTEP_SPACINGS),
    )  # fmt: skip
    sigma_schedule: str | None = option(
        None, "how the steps spread over the noise levels, A1111's schedule types: Karras, Exponential, "
        "Polyexponential and Beta (diffusers' use_*_sigmas: LMS, Euler, Heun, DPM++ 2M, UniPC); KL Optimal, Align "
        "Your Steps and Normal (explicit sigmas: Euler); Simple and DDIM (explicit timesteps: Euler, Heun, DPM++ 2M, "
        "DDPM, LCM) (default: the sampler's own)",
        choices=list(SIGMA_SCHEDULES), metavar="|".join(SIGMA_SCHEDULES),
    )  # fmt: skip
    num_inference_steps: int | None = option(
        None, "denoising steps (default: the model's, else 30)", "--steps", a1111="steps", infotext="Steps"
    )
    guidance_scale: float | None = option(
        None, "classifier-free guidance scale; <= 1 means no guidance (default: the model's, else 7.5)",
        "--cfg", a1111="cfg_scale", infotext="CFG scale",
    )  # fmt: skip
    guidance_rescale: float = option(
        0.0, "rescale guided noise towards the conditional one's std (0-1)", infotext="CFG Rescale phi"
    )
    guidance_interval: tuple[float, float | None] | None = option(
        None,
        "LO,HI: guide only at noise levels sigma in (LO, HI], one UNet pass at the other steps "
        "(Kynkaanniemi et al. 2024); 'all': every step (default: the model's at its settings, else all)",
        metavar="LO,HI", type=lambda text: parse_guidance_interval(text), a1111="guidance_interval",
        infotext="Guidance interval",
    )  # fmt: skip
    deep_cache: int | None = option(
        None, "N: run the UNet whole every N steps and only its shallow path in between, reusing its deep "
        "features (DeepCache); 1: off (default: the model's at its settings, else off)", metavar="N",
        a1111="deep_cache", infotext="Deep cache",
    )  # fmt: skip
    seed: int | list[int] | None = option(
        None, "seed of the first image; image i uses seed + i (default: random)", type=int, a1111="seed"
    )
    height: int | None = option(
        None, "image height in pixels (default: the model's, or the init image's)", a1111="height"
    )
    width: int | None = option(
        None, "image width in pixels (default: the model's, or the init image's)", a1111="width"
    )
    num_images_per_prompt: int = option(1, "images to generate", "--num-images", "-n", a1111="batch_size")
    init_image: ImageInput | None = option(None, "start from this image (image-to-image)", type=str)
    strength: float | None = option(
        None, "how much of the init image to re-noise, (0, 1] (default 0.8; inpaint 1.0)",
        a1111="denoising_strength", infotext="Denoising strength",
    )  # fmt: skip
    mask_image: ImageInput | None = option(
        None,
        "inpainting mask, white = repaint (another size is resized to the init image's, as A1111 does)",
        "--mask",
        type=str,
    )
    inpainting_fill: str = option(
        "original", "inpainting: what the masked area starts as below strength 1: fill (blurred colours from "
        "around it), original, latent noise, latent nothing (A1111's Masked content)", choices=list(MASKED_CONTENT),
        metavar="|".join(MASKED_CONTENT), infotext="Masked content",
    )  # fmt: skip
    padding_mask_crop: int | None = option(
        None, "inpaint only the masked area: the mask's box plus N pixels, sampled at the output size and pasted "
        "back (A1111's 'Only masked' and its padding; diffusers' padding_mask_crop)", metavar="N",
        infotext="Masked area padding",
    )  # fmt: skip
    vae_tiling: bool = option(
        False, "encode and decode with the VAE in overlapping tiles (diffusers' enable_tiling): large images in "
        "the memory of one tile, within a few levels of the whole decode", infotext="VAE tiling",
    )  # fmt: skip
    eta: float = option(0.0, "DDIM's eta: 0 is deterministic, 1 is DDPM-like", infotext="Eta DDIM")
    eta_noise_seed_delta: int = option(
        0, "A1111's ENSD: the noise a stochastic sampler adds at each step (Euler a, DDIM with eta, DDPM, LCM) "
        "is drawn from seed + this, the initial noise from the seed (A1111's NovelAI-compatible 31337)",
        "--ensd", infotext="ENSD",
    )  # fmt: skip
    clip_skip: int = option(
        0, "text-encoder layers to skip before the one the model reads (diffusers' clip_skip; A1111's "
        "'Clip skip' is this + 1)", infotext="Clip skip",
    )  # fmt: skip
    # SDXL's micro-conditioning: what the UNet is told about the training image's size and crop
    original_size: tuple[int, int] | None = option(
        None, "SDXL: the size (H,W) the UNet is told the image had before cropping (default: the output "
        "size); smaller values look like upscaled low-resolution images", metavar="H,W", type=lambda t: parse_pair(t, "original_size"),
    )  # fmt: skip
    crops_coords_top_left: tuple[int, int] = option(
        (0, 0), "SDXL: the crop's top-left corner (TOP,LEFT) the UNet is told; (0,0) centres the subject",
        metavar="TOP,LEFT", type=lambda t: parse_pair(t, "crops_coords_top_left"),
    )  # fmt: skip
    target_size: tuple[int, int] | None = option(
        None, "SDXL: the size (H,W) the UNet is told to draw at (default: the output size)", metavar="H,W",
        type=lambda t: parse_pair(t, "target_size"),
    )  # fmt: skip
    negative_original_size: tuple[int, int] | None = option(
        None, "SDXL: original_size for the negative branch (default: original_size); small values steer "
        "away from low-resolution looks", metavar="H,W", type=lambda t: parse_pair(t, "negative_original_size"),
    )  # fmt: skip
    negative_crops_coords_top_left: tuple[int, int] | None = option(
        None, "SDXL: crops_coords_top_left for the negative branch (default: crops_coords_top_left)",
        metavar="TOP,LEFT", type=lambda t: parse_pair(t, "negative_crops_coords_top_left"),
    )  # fmt: skip
    negative_target_size: tuple[int, int] | None = option(
        None, "SDXL: target_size for the negative branch (default: target_size)", metavar="H,W",
        type=lambda t: parse_pair(t, "negative_target_size"),
    )  # fmt: skip
    aesthetic_score: float = option(6.0, "SDXL refiner: the aesthetic score (0-10) to draw at")
    negative_aesthetic_score: float = option(2.5, "SDXL refiner: the aesthetic score of the negative branch")

    def replace(self, **changes: Any) -> SamplingParams:
        return dataclasses.replace(self, **changes)

    def validate(self) -> SamplingParams:
        """Check every field that can be checked without the model; raise `InputError` with one sentence
        naming the argument, what was given and what is allowed. Returns self.

        Sizes must also be multiples of the model's VAE factor, and images must decode: both are checked
        when the model and the images are at hand (`sdlab.sampling.inputs`)."""
        check_texts("prompt", self.prompt)
        if self.negative_prompt is not None:
            check_texts("negative_prompt", self.negative_prompt)
            lists = isinstance(self.prompt, list) and isinstance(self.negative_prompt, list)
            if lists and len(self.negative_prompt) != len(self.prompt):
                raise InputError(
                    f"got {len(self.negative_prompt)} negative prompts for {len(self.prompt)} prompts; "
                    "give one per prompt, or a single one"
                )
        if self.preset is not None and self.preset not in PRESETS:
            raise InputError(f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise InputError(f"unknown scheduler {self.scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
        if self.sigma_schedule is not None and self.sigma_schedule not in SIGMA_SCHEDULES:
            raise InputError(
                f"unknown sigma_schedule {self.sigma_schedule!r}; choose one of: {', '.join(SIGMA_SCHEDULES)}"
            )
        if self.timestep_spacing is not None and self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise InputError(
                f"unknown timestep_spacing {self.timestep_spacing!r}; choose one of: {', '.join(TIMESTEP_SPACINGS)}"
            )
        check_int("num_inference_steps (--steps)", self.num_inference_steps, 1, MAX_STEPS, optional=True)
        check_number("guidance_scale (--guidance-scale)", self.guidance_scale, optional=True)
        check_number("guidance_rescale", self.guidance_rescale, low=0, high=1)
        if self.guidance_interval is not None:
            check_guidance_interval(self.guidance_interval)
        check_int("deep_cache (--deep-cache)", self.deep_cache, 1, MAX_STEPS, optional=True, unit="1: off")
        check_int("eta_noise_seed_delta (--ensd)", self.eta_noise_seed_delta, 0, MAX_SEED)
        seeds = self.seed if isinstance(self.seed, list) else [self.seed]
        for seed in seeds:
            check_int("a seed", seed, 0, MAX_SEED, optional=not isinstance(self.seed, list), unit="2**32 - 1")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise InputError(
                    f"{name} must be a positive multiple of the VAE's factor (8 for SD), got {value!r}"
                )
            if value is not None and value > MAX_SIDE:
                raise InputError(f"{name} {value} is larger than the maximum of {MAX_SIDE} pixels")
        check_int("num_images_per_prompt (--num-images)", self.num_images_per_prompt, 1, None)
        check_number("eta", self.eta, low=0, high=1)
        if not isinstance(self.vae_tiling, bool):
            raise InputError(f"vae_tiling must be true or false, got {self.vae_tiling!r}")
        check_int("clip_skip (--clip-skip)", self.clip_skip, 0, 48, unit="0: the model's own layer")
        for name in SDXL_PAIRS:
            check_pair(name, getattr(self, name), crop="crops" in name)
        check_number("aesthetic_score", self.aesthetic_score, low=0, high=10)
        check_number("negative_aesthetic_score", self.negative_aesthetic_score, low=0, high=10)
        if self.inpainting_fill not in MASKED_CONTENT:
            raise InputError(
                f"inpainting_fill must be one of {', '.join(MASKED_CONTENT)}, got {self.inpainting_fill!r}"
            )
        check_int("padding_mask_crop", self.padding_mask_crop, 0, MAX_SIDE, optional=True)
        if self.mask_image is None and (
            self.inpainting_fill != "original" or self.padding_mask_crop is not None
        ):
            given = "padding_mask_crop" if self.padding_mask_crop is not None else "inpainting_fill"
            raise InputError(f"{given} applies to inpainting; give a mask_image with the init image")
        if self.mask_image is not None and self.init_image is None:
            raise InputError("a mask needs an init image to inpaint; pass init_image (--init-image) too")
        if self.strength is not None:
            if self.init_image is None:
                raise InputError(
                    "strength applies only to image-to-image; pass init_image (--init-image) too"
                )
            check_number("strength", self.strength)
            if not 0 < self.strength <= 1:
                raise InputError(f"strength must be in (0, 1], got {self.strength}")
            steps = self.num_inference_steps
            if steps is not None and int(steps * self.strength) < 1:
                raise InputError(
                    f"steps x strength = {steps} x {self.strength} runs no denoising step; "
                    "raise the steps or the strength so that their product is at least 1"
                )
        return self

    def resolve(self, recommended: SamplingParams, scheduler: str) -> SamplingParams:
        """These parameters with the model's recommendation applied as a package (see the module doc):
        every field of `PACKAGE` set, and `strength` set for image-to-image. `scheduler` is the one the
        model was saved with, used where neither the call nor the recommendation names one.

        Idempotent: resolving resolved parameters changes nothing. Raises `InputError` as `validate`."""
        self.validate()
        if self.preset is not None:
            recommended = PRESETS[self.preset].params()
        base = {
            "scheduler": recommended.scheduler or scheduler,
            "timestep_spacing": recommended.timestep_spacing,  # None: the model's scheduler config
            "sigma_schedule": recommended.sigma_schedule,  # None: the sampler's own
            "num_inference_steps": recommended.num_inference_steps or FALLBACK_STEPS,
            "guidance_scale": _first(recommended.guidance_scale, FALLBACK_GUIDANCE_SCALE),
        }
        departs = any(getattr(self, k) is not None and getattr(self, k) != v for k, v in base.items())
        package = {k: _first(getattr(self, k), v) for k, v in base.items()}
        approximations = {"guidance_interval": EVERY_STEP, "deep_cache": 1}
        for key, off in approximations.items():
            own = None if departs else getattr(recommended, key)
            package[key] = _first(getattr(self, key), own, off)
        package["guidance_interval"] = _interval(package["guidance_interval"])
        strength = self.strength
        if strength is None and self.init_image is not None:
            strength = 1.0 if self.mask_image is not None else DEFAULT_STRENGTH
        return self.replace(**package, strength=strength).validate()

    def package(self) -> dict[str, Any]:
        """The fields of the model's recommendation (`PACKAGE`) that are set, as keyword arguments."""
        return {k: getattr(self, k) for k in PACKAGE if getattr(self, k) is not None}

    def recipe(self) -> dict[str, Any]:
        """The settings as the PNG recipe (JSON) records them: every field but the prompts, the seed and
        the images, which the recipe records per image and by file."""
        out = {}
        for f in fields(SamplingParams):
            if f.name in ("prompt", "negative_prompt", "seed", "init_image", "mask_image"):
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any]) -> SamplingParams:
        """The settings of a PNG recipe (`recipe()`, plus prompt and seed); unknown keys are left out."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in recipe.items() if k in known}
        for name in ("guidance_interval", *SDXL_PAIRS):  # JSON keeps tuples as lists
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    @classmethod
    def recommendation(cls, settings: dict[str, Any], where: str) -> SamplingParams:
        """A model's recommendation from its `sdlab.json` "sampling" object (the `PACKAGE` keys only);
        `InputError` naming `where` for an unknown key or a bad value."""
        unknown = sorted(set(settings) - set(PACKAGE))
        if unknown:
            raise InputError(f"{where}: unknown sampling setting {unknown[0]!r}; known: {', '.join(PACKAGE)}")
        interval = settings.get("guidance_interval")
        try:
            return cls(**{**settings, "guidance_interval": _interval(interval)}).validate()
        except InputError as err:
            raise InputError(f"{where}: {err}") from None

    def to_json(self) -> dict[str, Any]:
        """The `PACKAGE` fields that are set, as `sdlab.json` stores them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.package().items()}


def neutral(name: str) -> Any:
    """A field's value when it is off: every step for the guidance interval, 1 for the deep cache, else
    its default (what an infotext or recipe that leaves the field out means)."""
    off = {"guidance_interval": EVERY_STEP, "deep_cache": 1}
    if name in off:
        return off[name]
    return SamplingParams.__dataclass_fields__[name].default


def parse_guidance_interval(text: str | None) -> tuple[float, float | None] | None:
    """ "LO,HI" (noise levels sigma; HI may be "inf") -> (lo, hi); "all" -> every step; None -> None.

    Raises `InputError` with one sentence for anything else."""
    if text is None:
        return None
    if text.strip().lower() in ("all", "always"):
        return EVERY_STEP
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


def parse_pair(text: str, name: str) -> tuple[int, int]:
    """ "H,W" (or "HxW") -> (h, w) for an SDXL size or crop setting; `InputError` otherwise."""
    parts = text.replace("x", ",").split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        pair = (int(parts[0]), int(parts[1]))
    except ValueError:
        raise InputError(
            f"--{name.replace('_', '-')} must be two integers H,W (pixels), got {text!r}"
        ) from None
    check_pair(name, pair, crop="crops" in name)
    return pair


def check_pair(name: str, value: Any, *, crop: bool = False) -> None:
    """`InputError` unless `value` is None or two integers in pixels: sizes from 1, crops from 0, at
    most `MAX_CONDITIONING_SIZE`."""
    if value is None:
        return
    low = 0 if crop else 1
    ok = isinstance(value, tuple | list) and len(value) == 2
    ok = ok and all(
        isinstance(v, int) and not isinstance(v, bool) and low <= v <= MAX_CONDITIONING_SIZE for v in value
    )
    if not ok:
        what = "(top, left), each from 0" if crop else "(height, width), each from 1"
        raise InputError(
            f"{name} must be two integers {what} to {MAX_CONDITIONING_SIZE} pixels, got {value!r}"
        )


def check_guidance_interval(interval: Any) -> tuple[float, float]:
    """(lo, hi) as floats, hi None -> inf; raises `InputError` unless 0 <= lo < hi."""
    try:
        lo, hi = interval
        if isinstance(lo, bool) or isinstance(hi, bool):
            raise TypeError
        lo, hi = float(lo), math.inf if hi is None else float(hi)
    except (TypeError, ValueError):
        raise InputError(
            f"guidance_interval (--guidance-interval) must be two noise levels LO,HI, got {interval!r}"
        ) from None
    if math.isnan(lo) or math.isnan(hi) or not 0 <= lo < hi:
        raise InputError(f"guidance_interval needs 0 <= LO < HI (noise levels sigma), got {lo}, {hi}")
    return lo, hi


def check_int(
    name: str, value: Any, low: int, high: int | None, *, optional: bool = False, unit: str = ""
) -> None:
    """`InputError` unless `value` is an int (not a bool) in [low, high] (None: no upper bound)."""
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high and value > high):
        allowed = f"from {low} to {high}" if high else f">= {low}"
        raise InputError(f"{name} must be an integer {allowed}{f' ({unit})' if unit else ''}, got {value!r}")


def check_number(
    name: str, value: Any, *, optional: bool = False, low: float | None = None, high: float | None = None
) -> None:
    """`InputError` unless `value` is a finite int or float (not a bool) in [low, high]."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise InputError(f"{name} must be from {low:g} to {high:g}, got {value}")


def check_texts(name: str, value: Any) -> None:
    """`InputError` unless `value` is text (or a list of texts) that encodes as UTF-8."""
    texts = value if isinstance(value, list) else [value]
    if not texts or not all(isinstance(t, str) for t in texts):
        raise InputError(f"{name} must be text or a list of texts, got {type(value).__name__}")
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:  # a lone surrogate ("\ud800") from JSON: no character at all
            raise InputError(
                f"{name} holds {text[err.start]!r}, which is not a character (a lone surrogate)"
            ) from None


def _interval(interval: Any) -> tuple[float, float | None] | None:
    """An interval as a (lo, hi) tuple, hi None when unbounded (JSON gives lists)."""
    if interval is None:
        return None
    lo, hi = check_guidance_interval(interval)
    return (lo, None if math.isinf(hi) else hi)


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)
