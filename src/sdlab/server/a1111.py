"""AUTOMATIC1111's API bodies (`modules/api/models.py`) and their mapping onto sdlab's request layer.

Field names are A1111's, so its clients (webuiapi, editor plugins, bots) work unchanged. Fields
left out take the *model's* recommendation (steps, CFG scale, size), where A1111 takes fixed
defaults made for 512-pixel models. A field sdlab does not implement is accepted, never silently
misread: when its value would change the image, it is listed under `ignored` in the response's
`info`. A sampler or schedule type sdlab does not have is refused (HTTP 422).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from sdlab.errors import InputError
from sdlab.metadata import parse_parameters
from sdlab.sampling.hires import BUILT_IN_UPSCALERS, DEFAULT_HIRES_STRENGTH, DEFAULT_UPSCALER
from sdlab.sampling.params import MASKED_CONTENT, neutral
from sdlab.sampling.schedulers import SCHEDULE_TYPES, SCHEDULERS, resolve_sampler, schedule_settings
from sdlab.service import GenerationRequest, RequestResult
from sdlab.service.request import a1111_fields
from sdlab.version import __version__

# A1111 fields sdlab does not implement, with the values under which leaving them out changes
# nothing (ANY: the field never changes the image in sdlab's setting, e.g. hires-fix options when
# `enable_hr` is off, or file-saving flags on a server that saves nothing).
ANY = object()
NEUTRAL: dict[str, tuple] = {
    "styles": ([], None),
    "subseed": (ANY,),  # only used with subseed_strength
    "subseed_strength": (0, None),
    "seed_resize_from_h": (-1, 0, None),
    "seed_resize_from_w": (-1, 0, None),
    "restore_faces": (False, None),
    "tiling": (False, None),
    "do_not_save_samples": (ANY,),
    "do_not_save_grid": (ANY,),
    "save_images": (False, None),
    "s_min_uncond": (0, None),
    "s_churn": (0, None),
    "s_tmax": (0, None, math.inf),
    "s_tmin": (0, None),
    "s_noise": (1, None),
    "hr_checkpoint_name": (None, "", "Use same checkpoint"),
    "refiner_checkpoint": (None, "", "None"),
    "refiner_switch_at": (ANY,),
    "disable_extra_networks": (False, None),
    "comments": (ANY,),
    "force_task_id": (ANY,),
    "infotext": (None, ""),
    "script_name": (None, "", "None"),
    "script_args": ([], None),
    "alwayson_scripts": ({}, None),
    "sampler_index": (ANY,),  # superseded by sampler_name; used when that is missing
    "override_settings_restore_afterwards": (ANY,),  # overrides always last for one request
    "image_cfg_scale": (ANY,),  # instruct-pix2pix models only
    "initial_noise_multiplier": (1, None),
    "resize_mode": (0, None),  # "just resize": the init image is resized to width x height
    "include_init_images": (False, None),
    "latent_mask": (None,),
    "mask_round": (ANY,),  # sdlab's masks are always rounded to 0/1 at latent resolution
    "firstphase_width": (ANY,),
    "firstphase_height": (ANY,),
}
HIRES = re.compile(r"^hr_")
OVERRIDES_NEUTRAL = {"sd_vae": (None, "", "Automatic", "None")}
# A1111 options that change the image, applied per request (`override_settings`) or for every request
# (`POST /sdapi/v1/options`): option -> (SamplingParams field, A1111's value -> the field's)
GENERATION_OPTIONS = {
    "CLIP_stop_at_last_layers": (
        "clip_stop_at_last_layers",
        lambda n: n,
    ),  # the model decides: SDXL ignores it
    "eta_noise_seed_delta": ("eta_noise_seed_delta", lambda n: n),
}
OPTION_DEFAULTS = {  # SamplingParams' own defaults, in A1111's terms
    "CLIP_stop_at_last_layers": neutral("clip_skip") + 1,
    "eta_noise_seed_delta": neutral("eta_noise_seed_delta"),
}
# A1111's `samples_format`: how response images are encoded (the parameters in PNG chunks or JPEG/WebP EXIF)
SAMPLES_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


def check_samples_format(value: Any) -> str:
    """`samples_format`, lower-cased; `InputError` naming the formats otherwise."""
    if not isinstance(value, str) or value.lower() not in SAMPLES_FORMATS:
        raise InputError(f"samples_format must be one of {', '.join(SAMPLES_FORMATS)}, got {value!r}")
    return value.lower()


def check_option(key: str, value: Any) -> int:
    """A generation option's value, checked: `InputError` naming it unless it is a whole number in range."""
    low = 1 if key == "CLIP_stop_at_last_layers" else 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON clients may send 2.0
    if isinstance(value, bool) or not isinstance(value, int) or value < low or value > 2**32 - 1:
        raise InputError(f"{key} must be a whole number from {low}, got {value!r}")
    return value


class Txt2ImgRequest(BaseModel):
    """`POST /sdapi/v1/txt2img`; any other A1111 field is accepted and reported (see module doc)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = Field(-1, description="-1: random; otherwise 0 to 2**32 - 1. Image i gets seed + i.")
    sampler_name: str | None = Field(
        None, description="e.g. 'Euler a', 'DPM++ 2M', 'DDIM'; default: the model's"
    )
    scheduler: str | None = Field(
        None,
        description="schedule type, A1111 1.10's: " + ", ".join(SCHEDULE_TYPES) + " (or their labels)",
    )
    batch_size: int = 1
    n_iter: int = Field(1, description="batch count: batches run one after another")
    steps: int | None = Field(None, description="default: the model's recommendation")
    cfg_scale: float | None = Field(None, description="default: the model's recommendation")
    width: int | None = Field(None, description="pixels; default: the model's size (or the init image's)")
    height: int | None = Field(None, description="pixels; default: the model's size (or the init image's)")
    eta: float | None = Field(None, description="DDIM's eta")
    guidance_interval: list[float | None] | None = Field(
        None, description="sdlab: [sigma_lo, sigma_hi] (null: unbounded) where CFG runs; default: the model's"
    )
    deep_cache: StrictInt | None = Field(
        None,
        description="sdlab: run the UNet whole every N steps, its shallow path between (DeepCache); 1: off",
    )
    override_settings: dict[str, Any] | None = Field(
        None, description="options for this request only, e.g. {'sd_model_checkpoint': 'digits'}"
    )
    send_images: bool = True
    # the hires fix (txt2img): draw, upscale, re-draw at denoising_strength (`sdlab.sampling.hires`)
    enable_hr: bool = Field(
        False, description="hires fix: draw at width x height, upscale, re-draw the details"
    )
    denoising_strength: float | None = Field(
        None, description=f"hires fix: how much the second pass re-draws (default {DEFAULT_HIRES_STRENGTH})"
    )
    hr_scale: float = Field(2.0, description="hires fix: upscale factor, unless hr_resize_x/y are given")
    hr_resize_x: int = Field(
        0, description="hires fix: final width in pixels (0: from hr_scale or the height)"
    )
    hr_resize_y: int = Field(
        0, description="hires fix: final height in pixels (0: from hr_scale or the width)"
    )
    hr_upscaler: str | None = Field(
        None,
        description="hires fix: " + ", ".join(BUILT_IN_UPSCALERS) + ", or a model's name; default Latent",
    )
    hr_second_pass_steps: int = Field(0, description="hires fix: second-pass steps; 0: steps")
    hr_sampler_name: str | None = Field(
        None, description="hires fix: second-pass sampler; default: sampler_name"
    )
    hr_scheduler: str | None = Field(
        None, description="hires fix: second-pass schedule type: the first pass's only"
    )
    hr_prompt: str = Field("", description="hires fix: second-pass prompt; empty: the prompt")
    hr_negative_prompt: str = Field(
        "", description="hires fix: second-pass negative prompt; empty: the negative"
    )


class Img2ImgRequest(Txt2ImgRequest):
    """`POST /sdapi/v1/img2img`: image to image, and inpainting with `mask`."""

    init_images: list[str] = Field(..., description="base64 images (data: URLs accepted); the first is used")
    denoising_strength: float = Field(0.75, description="share of the schedule re-run, (0, 1]")
    mask: str | None = Field(None, description="base64 inpainting mask: white is repainted")
    mask_blur: float = Field(4, description="Gaussian blur radius of the mask, pixels")
    inpainting_mask_invert: int = Field(0, description="1: repaint the black part instead")
    inpainting_fill: int = Field(
        0,
        ge=0,
        le=3,
        description="masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing (A1111's)",
    )
    inpaint_full_res: bool = Field(
        True, description="inpaint area: true 'only masked' (A1111's default), false the whole picture"
    )
    inpaint_full_res_padding: int = Field(
        0, ge=0, description="'only masked': pixels of padding around the mask's box"
    )


class PNGInfoRequest(BaseModel):
    image: str = Field(..., description="a base64 PNG")


def to_request(
    body: Txt2ImgRequest, *, img2img: bool = False, options: dict[str, Any] | None = None
) -> tuple[GenerationRequest, dict[str, Any]]:
    """The `GenerationRequest` an A1111 body asks for, and the fields it sets that sdlab ignores.

    `options` are the server's generation options (`GENERATION_OPTIONS`, set by `POST /options`); a request's
    `override_settings` take precedence for that request, as in A1111."""
    given = body.model_dump(exclude_unset=True)
    overrides = dict(body.override_settings or {})
    ignored = _ignored(given, set(type(body).model_fields))
    for key, value in overrides.items():
        if key in GENERATION_OPTIONS:
            overrides[key] = check_option(key, value)
        elif key != "sd_model_checkpoint" and value not in OVERRIDES_NEUTRAL.get(key, ()):
            ignored[f"override_settings.{key}"] = value
    chosen = {
        **OPTION_DEFAULTS,
        **(options or {}),
        **{k: v for k, v in overrides.items() if k in GENERATION_OPTIONS},
    }
    for key, value in given.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{key} must be a finite number, got {value}")
    sampler_name = body.sampler_name or given.get("sampler_index")
    if sampler_name is not None and not isinstance(sampler_name, str):
        raise InputError(f"sampler_index must be a sampler's name, got {sampler_name!r}")
    scheduler = resolve_sampler(sampler_name, body.scheduler)
    eta = body.eta
    if eta is not None and scheduler == "euler_a" and eta != 1:
        ignored["eta"] = eta  # diffusers' Euler a always runs the full ancestral step (eta 1)
    declared = type(body).model_fields
    fields: dict[str, Any] = {
        name: getattr(body, key) for key, name in a1111_fields().items() if key in declared
    }  # the fields both sides name, by `GenerationRequest`'s `a1111` names
    fields.update(
        negative_prompt=body.negative_prompt or None,
        model=overrides.get("sd_model_checkpoint"),
        scheduler=scheduler,
        **schedule_settings(body.scheduler, scheduler),
        seed=None if body.seed == -1 else body.seed,
        eta=eta if scheduler == "ddim" and eta is not None else 0.0,
        **{field: convert(chosen[key]) for key, (field, convert) in GENERATION_OPTIONS.items()},
    )
    if not img2img:  # txt2img's denoising_strength is the hires pass's, and changes nothing without it
        fields["strength"] = None
    if body.enable_hr and img2img:
        ignored["enable_hr"] = True  # A1111's img2img has no hires fix either
    elif body.enable_hr:
        fields.update(_hires_fields(body, sampler_name, scheduler, ignored))
    if img2img:
        assert isinstance(body, Img2ImgRequest)
        if not body.init_images:
            raise InputError("init_images is empty; give one base64 image")
        if len(body.init_images) > 1:
            ignored["init_images"] = f"{len(body.init_images) - 1} images after the first"
        fields["init_image"] = decode_image(body.init_images[0], "init_images[0]")
        if body.mask:  # A1111's inpainting defaults where a field is left out: fill, only masked
            fields.update(
                mask_image=decode_image(body.mask, "mask"), invert_mask=bool(body.inpainting_mask_invert),
                inpainting_fill=MASKED_CONTENT[body.inpainting_fill],
                padding_mask_crop=body.inpaint_full_res_padding if body.inpaint_full_res else None,
            )  # fmt: skip
    if fields.get("guidance_interval") is not None:
        fields["guidance_interval"] = tuple(fields["guidance_interval"])
    return GenerationRequest(**fields), ignored


def _hires_fields(
    body: Txt2ImgRequest, sampler_name: str | None, scheduler: str | None, ignored: dict[str, Any]
) -> dict[str, Any]:
    """The `HiresParams` fields of a txt2img body with `enable_hr` (A1111's defaults: scale 2, Latent, the
    first pass's sampler and steps, denoising strength 0.7 as its UI's, since its API's None fails there)."""
    hr_scheduler = None
    if body.hr_sampler_name not in (None, "", "Use same sampler"):
        hr_scheduler = resolve_sampler(body.hr_sampler_name, body.scheduler)
    if body.hr_scheduler not in (None, "", "Use same scheduler") and body.hr_scheduler != body.scheduler:
        ignored["hr_scheduler"] = body.hr_scheduler  # the second pass runs the first pass's schedule type
    resize = body.hr_resize_x or body.hr_resize_y
    return {
        "hr_scale": None if resize else body.hr_scale,
        "hr_resize_x": body.hr_resize_x or None,
        "hr_resize_y": body.hr_resize_y or None,
        "hr_upscaler": body.hr_upscaler or DEFAULT_UPSCALER,
        "hr_second_pass_steps": body.hr_second_pass_steps,
        "hr_denoising_strength": DEFAULT_HIRES_STRENGTH
        if body.denoising_strength is None
        else body.denoising_strength,
        "hr_scheduler": None if hr_scheduler == scheduler else hr_scheduler,
        "hr_prompt": body.hr_prompt or None,
        "hr_negative_prompt": body.hr_negative_prompt or None,
    }


def decode_image(data: str, what: str) -> bytes:
    """The bytes of a base64 image as A1111 clients send it (a `data:image/...;base64,` prefix is allowed).

    Only base64 is taken: never a path or a URL. The bytes are checked by the safe image loader later.
    """
    if not isinstance(data, str) or not data:
        raise InputError(f"{what} is empty; give a base64-encoded image")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:  # line breaks and blanks are dropped, as `base64.encodebytes` writes them and A1111 reads them
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what} is not a base64-encoded image") from None


def info(result: RequestResult, request: GenerationRequest, ignored: dict[str, Any]) -> dict[str, Any]:
    """A1111's `info` (its `Processed.js()`), plus `ignored` fields and an `interrupted` record."""
    recipes = [g.recipe for g in result.images]
    first = recipes[0] if recipes else {}
    seeds = [r["seed"] for r in recipes]
    scheduler = first.get("scheduler")
    return {
        "prompt": request.prompt,
        "all_prompts": [r["prompt"] for r in recipes],
        "negative_prompt": request.negative_prompt or "",
        "all_negative_prompts": [r["negative_prompt"] for r in recipes],
        "seed": seeds[0] if seeds else request.seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * len(seeds),
        "subseed_strength": 0,
        "width": first.get("width"),
        "height": first.get("height"),
        "sampler_name": SCHEDULERS[scheduler].a1111 if scheduler else None,
        "scheduler": scheduler,
        "cfg_scale": first.get("guidance_scale"),
        "steps": first.get("num_inference_steps"),
        "batch_size": request.num_images_per_prompt,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": result.model.model_name,
        "sd_model_hash": first.get("model_hash"),
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": first.get("strength") or first.get("hr_denoising_strength"),
        # sdlab's settings as the infotext has them: written when on, or when leaving them out turns them on
        "extra_generation_params": _extra_parameters(result.images[0].infotext) if result.images else {},
        "index_of_first_image": 0,
        "infotexts": [g.infotext for g in result.images],
        "styles": [],
        "job_timestamp": result.extra.get("job_timestamp", ""),
        "clip_skip": first.get("clip_skip", 0) + 1,
        "is_using_inpainting_conditioning": bool(
            request.mask_image is not None and result.pipe.is_inpainting_unet
        ),
        "version": f"sdlab {__version__}",
        "ignored": ignored,
        # folder embeddings a prompt named that do not fit this model: their words stayed text (A1111's skipped)
        "skipped_embeddings": result.extra.get("skipped_embeddings", []),
        "interrupted": result.extra.get("interrupted"),
        "stopped_at_step": [r.get("stopped_at_step") for r in recipes],
    }


def _extra_parameters(infotext: str) -> dict[str, Any]:
    """sdlab's own infotext settings (the extension fields), as A1111's `extra_generation_params`."""
    _, _, settings = parse_parameters(infotext)
    extras = {key: settings[key] for key in ("Guidance interval", "Deep cache") if key in settings}
    if "Deep cache" in extras:
        extras["Deep cache"] = int(extras["Deep cache"])
    return extras


def echo(body: BaseModel, result: RequestResult) -> dict[str, Any]:
    """A1111's `parameters`: the request as received, with what the model decided filled in."""
    parameters = body.model_dump()
    first = result.images[0].recipe if result.images else {}
    resolved = {
        "steps": first.get("num_inference_steps"),
        "cfg_scale": first.get("guidance_scale"),
        "width": first.get("width"),
        "height": first.get("height"),
        "sampler_name": SCHEDULERS[first["scheduler"]].a1111 if "scheduler" in first else None,
        "guidance_interval": first.get("guidance_interval"),
        "deep_cache": first.get("deep_cache") or 1,
    }
    for key, value in resolved.items():
        if parameters.get(key) is None:
            parameters[key] = value
    for key in ("init_images", "mask"):  # A1111 drops the images from the echo too
        if key in parameters:
            parameters[key] = None
    return parameters


def _ignored(given: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    ignored = {}
    for key, value in given.items():
        if key in fields or (HIRES.match(key) and not given.get("enable_hr")):
            continue
        elif key in NEUTRAL:
            if not _neutral(value, NEUTRAL[key]):
                ignored[key] = value
        else:
            ignored[key] = value  # not an A1111 field sdlab knows: reported, never guessed at
    return ignored


def _neutral(value: Any, neutral: tuple) -> bool:
    return ANY in neutral or any(value is n or (value == n and not isinstance(value, bool)) for n in neutral)
