"""The hires fix: draw small, upscale, then re-draw the details at the large size (AUTOMATIC1111's "Hires. fix").

A model draws well near the size it was trained at; asked for a much larger image it repeats subjects.
The hires fix (A1111's `StableDiffusionProcessingTxt2Img.sample_hr_pass`) runs text-to-image at the
first-pass size, upscales the result, and runs image-to-image on it at `hr_denoising_strength`:

- the upscale is of the latents (`LATENT_UPSCALE_MODES`, A1111's "Latent" modes: `torch.nn.functional.
  interpolate`), or of the decoded pixels (`PIXEL_UPSCALERS`: Lanczos, nearest; or an ESRGAN-family
  model file read by `spandrel`), which are then encoded again;
- the second pass runs exactly `hr_second_pass_steps` steps (0: the first pass's steps) on a schedule of
  int(steps / min(strength, 0.999)) steps, as A1111's `setup_img2img_steps` does for the hires pass;
- its noise comes from each image's own seed at the new size (A1111's `ImageRNG` made again for the pass).

Both passes are `sdlab.sampling.loop.generate`: the second is an image-to-image call whose init image is
the first pass's upscaled latents or pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdlab.errors import InputError
from sdlab.options import option
from sdlab.sampling.params import MAX_SIDE, MAX_STEPS, check_int, check_number, check_texts
from sdlab.sampling.schedulers import SCHEDULERS

if TYPE_CHECKING:
    import PIL.Image
    import torch

    from sdlab.pipeline import Pipeline
    from sdlab.sampling.loop import GenerationResult, StepCallback
    from sdlab.sampling.params import SamplingParams

# A1111's `shared.latent_upscale_modes`: name -> (torch interpolate mode, antialias)
LATENT_UPSCALE_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# A1111's built-in pixel upscalers (`modules/upscaler.py`): "None" resizes with Lanczos too
PIXEL_UPSCALERS = ("None", "Lanczos", "Nearest")
BUILT_IN_UPSCALERS = (*LATENT_UPSCALE_MODES, *PIXEL_UPSCALERS)
DEFAULT_UPSCALER = "Latent"  # A1111's `latent_upscale_default_mode` and its UI's default
DEFAULT_HIRES_STRENGTH = 0.7  # A1111's txt2img UI default for the hires pass's denoising strength
MAX_HIRES_SCALE = 8.0
UPSCALER_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")  # model files spandrel reads


@dataclass(frozen=True)
class HiresParams:
    """The hires fix's settings, with A1111's API names (`hr_*`). It is on when `hr_scale`, `hr_resize_x`
    or `hr_resize_y` is set; `hiresfix(...)` gives the checked settings or None."""

    hr_scale: float | None = option(
        None, "hires fix: draw at the given size, upscale by this factor and re-draw the details (A1111's "
        "'Upscale by'; e.g. 2)", "--hires-scale", metavar="X",
    )  # fmt: skip
    hr_resize_x: int | None = option(
        None, "hires fix: the final width in pixels instead of a factor (with --hires-height: the first pass "
        "is upscaled to cover it and cropped, as A1111 does)", "--hires-width", metavar="W",
    )  # fmt: skip
    hr_resize_y: int | None = option(
        None, "hires fix: the final height in pixels instead of a factor", "--hires-height", metavar="H",
    )  # fmt: skip
    hr_upscaler: str = option(
        DEFAULT_UPSCALER, "hires fix: how to upscale: " + ", ".join(BUILT_IN_UPSCALERS)
        + ", or an ESRGAN-family model file (needs spandrel)", "--hires-upscaler", metavar="NAME",
    )  # fmt: skip
    hr_second_pass_steps: int = option(
        0, "hires fix: steps of the second pass (0: the first pass's); exactly this many run",
        "--hires-steps",
    )  # fmt: skip
    hr_denoising_strength: float = option(
        DEFAULT_HIRES_STRENGTH, "hires fix: how much of the upscaled image the second pass re-draws, (0, 1] "
        "(A1111's denoising strength in txt2img)", "--hires-strength",
    )  # fmt: skip
    hr_scheduler: str | None = option(
        None, "hires fix: the second pass's sampler (default: the first pass's)", "--hires-sampler",
        choices=list(SCHEDULERS), metavar="NAME",
    )  # fmt: skip
    hr_prompt: str | None = option(
        None, "hires fix: the second pass's prompt (default: the prompt)", "--hires-prompt"
    )
    hr_negative_prompt: str | None = option(
        None, "hires fix: the second pass's negative prompt (default: the negative prompt)",
        "--hires-negative-prompt",
    )  # fmt: skip

    def hiresfix(self) -> HiresParams | None:
        """These settings checked (`InputError` with one sentence), or None when the hires fix is off."""
        if self.hr_scale is None and not self.hr_resize_x and not self.hr_resize_y:
            return None
        if self.hr_scale is not None:
            check_number("hr_scale (--hires-scale)", self.hr_scale, low=1, high=MAX_HIRES_SCALE)
        check_int("hr_resize_x (--hires-width)", self.hr_resize_x, 0, MAX_SIDE, optional=True)
        check_int("hr_resize_y (--hires-height)", self.hr_resize_y, 0, MAX_SIDE, optional=True)
        check_int("hr_second_pass_steps (--hires-steps)", self.hr_second_pass_steps, 0, MAX_STEPS)
        check_number("hr_denoising_strength (--hires-strength)", self.hr_denoising_strength, low=0, high=1)
        if self.hr_denoising_strength <= 0:
            raise InputError("hr_denoising_strength (--hires-strength) must be above 0: at 0 the second pass "
                             "changes nothing")  # fmt: skip
        if self.hr_scheduler is not None and self.hr_scheduler not in SCHEDULERS:
            raise InputError(
                f"unknown hr_scheduler {self.hr_scheduler!r}; choose one of: {', '.join(SCHEDULERS)}"
            )
        upscaler = self.hr_upscaler
        if not isinstance(upscaler, str) or not upscaler:
            raise InputError(f"hr_upscaler must be an upscaler's name, got {upscaler!r}")
        for name in ("hr_prompt", "hr_negative_prompt"):
            if getattr(self, name) is not None:
                check_texts(name, getattr(self, name))
        return self

    def hires_settings(self) -> dict[str, Any]:
        """The fields as a recipe records them (`sdlab` PNG chunk); only set ones."""
        return {
            f.name: getattr(self, f.name) for f in fields(HiresParams) if getattr(self, f.name) is not None
        }


def hires_infotext(r: dict[str, Any]) -> dict[str, object]:
    """A recipe's hires settings as A1111's `create_infotext` writes them ("Denoising strength", "Hires upscale"
    or "Hires resize", "Hires steps" when not 0, "Hires upscaler", "Hires sampler" and the hires prompts when
    they differ from the first pass's); {} when the hires fix did not run."""
    if r.get("hr_scale") is None and not r.get("hr_resize_x") and not r.get("hr_resize_y"):
        return {}
    from sdlab.sampling.schedulers import a1111_sampler

    out: dict[str, object] = {"Denoising strength": r.get("hr_denoising_strength", DEFAULT_HIRES_STRENGTH)}
    if r.get("hr_resize_x") or r.get("hr_resize_y"):
        out["Hires resize"] = f"{r.get('hr_resize_x') or 0}x{r.get('hr_resize_y') or 0}"
    else:
        out["Hires upscale"] = r["hr_scale"]
    if r.get("hr_second_pass_steps"):
        out["Hires steps"] = r["hr_second_pass_steps"]
    out["Hires upscaler"] = r.get("hr_upscaler", DEFAULT_UPSCALER)
    if r.get("hr_scheduler") and r["hr_scheduler"] != r.get("scheduler"):
        out["Hires sampler"] = a1111_sampler(r["hr_scheduler"])[0]
    if r.get("hr_prompt") and r["hr_prompt"] != r.get("prompt"):
        out["Hires prompt"] = r["hr_prompt"]
    if r.get("hr_negative_prompt") and r["hr_negative_prompt"] != r.get("negative_prompt"):
        out["Hires negative prompt"] = r["hr_negative_prompt"]
    return out


def records_hires(settings: dict[str, str]) -> bool:
    """Whether an infotext's settings record the hires fix (A1111 writes one of these keys when it ran)."""
    return any(key in settings for key in ("Hires upscale", "Hires resize", "Hires upscaler", "Hires steps"))


def hires_from_infotext(s: dict[str, str]) -> dict[str, Any]:
    """The `HiresParams` fields an A1111 infotext's settings ask for (the inverse of `hires_infotext`; A1111's
    `parse_generation_parameters`: no "Hires upscaler" is "Latent"); {} without the hires fix. Raises
    `InputError` for a value that cannot be read, and for a hires schedule type or checkpoint of its own,
    which sdlab does not apply."""
    if not records_hires(s):
        return {}
    from sdlab.sampling.schedulers import resolve_sampler

    hires_type = s.get("Hires schedule type")
    if hires_type not in (None, "Use same scheduler", s.get("Schedule type", "Automatic")):
        raise InputError(f"'Hires schedule type: {hires_type}' asks for a second schedule type in the hires pass, "
                         "which sdlab does not apply")  # fmt: skip
    try:
        out: dict[str, Any] = {
            "hr_denoising_strength": float(s.get("Denoising strength", DEFAULT_HIRES_STRENGTH)),
            "hr_upscaler": s.get("Hires upscaler", DEFAULT_UPSCALER),
            "hr_second_pass_steps": int(s.get("Hires steps", 0)),
        }
        if "Hires resize" in s:
            x, y = (int(v) for v in s["Hires resize"].split("x"))
            out.update(hr_resize_x=x, hr_resize_y=y)
        else:
            out["hr_scale"] = float(s.get("Hires upscale", 2.0))
    except ValueError:
        raise InputError("its hires fix settings cannot be read: " + ", ".join(
            f"{k}: {v}" for k, v in s.items() if k.startswith("Hires") or k == "Denoising strength"
        )) from None  # fmt: skip
    if s.get("Hires sampler") not in (None, "Use same sampler"):
        out["hr_scheduler"] = resolve_sampler(s["Hires sampler"], hires_type or s.get("Schedule type"))
    for key, name in (("Hires prompt", "hr_prompt"), ("Hires negative prompt", "hr_negative_prompt")):
        if s.get(key):
            out[name] = s[key]
    return out


def target_size(width: int, height: int, hires: HiresParams, factor: int = 8) -> tuple[int, int, int, int]:
    """(upscale_width, upscale_height, crop_x, crop_y) in pixels for a first pass of `width` x `height`.

    As A1111's `calculate_target_resolution`: a scale gives int(side x scale); one resize side keeps the
    aspect ratio (integer division); both sides scale the first pass to cover them, and the excess is
    cropped from the latents, half on each side (`crop_*` are latent cells x `factor`). Sizes are then
    rounded down to multiples of `factor`, the latent grid (A1111 truncates in the latent resize)."""
    x, y = hires.hr_resize_x or 0, hires.hr_resize_y or 0
    crop_x = crop_y = 0
    if x == 0 and y == 0:
        scale = hires.hr_scale if hires.hr_scale is not None else 2.0
        up_w, up_h = int(width * scale), int(height * scale)
    elif y == 0:
        up_w, up_h = x, x * height // width
    elif x == 0:
        up_w, up_h = y * width // height, y
    else:
        if width / height < x / y:
            up_w, up_h = x, x * height // width
        else:
            up_w, up_h = y * width // height, y
        crop_x, crop_y = (up_w - x) // factor * factor, (up_h - y) // factor * factor
    up_w, up_h = up_w // factor * factor, up_h // factor * factor
    if min(up_w, up_h) < factor or max(up_w - crop_x, up_h - crop_y) > MAX_SIDE:
        raise InputError(
            f"the hires fix would make a {up_w - crop_x}x{up_h - crop_y} image from {width}x{height}; the final "
            f"size must be from {factor} to {MAX_SIDE} pixels a side"
        )
    return up_w, up_h, crop_x, crop_y


def second_pass_schedule(steps: int, strength: float) -> tuple[int, float]:
    """(num_inference_steps, strength) for `generate` so that exactly `steps` denoising steps run at the end
    of a schedule of int(steps / min(strength, 0.999)) steps: A1111's `setup_img2img_steps` with its steps
    given, as the hires pass always gives them. The strength is nudged so that int(total x strength) is
    `steps` despite float rounding."""
    total = max(int(steps / min(strength, 0.999)), steps)
    return total, min(1.0, (steps + 0.5) / total)


def upscale_latents(latents: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Latents (B, C, h, w) -> (B, C, H, W) for `size` (H, W) in latent cells, with A1111's latent mode `mode`."""
    import torch.nn.functional as F  # noqa: N812 (torch's own name)

    how, antialias = LATENT_UPSCALE_MODES[mode]
    dtype = latents.dtype  # bicubic and antialiasing have no half-precision CPU kernels
    out = F.interpolate(latents.float(), size=size, mode=how, antialias=antialias)
    return out.to(dtype)


def upscale_images(
    images: list[PIL.Image.Image],
    size: tuple[int, int],
    upscaler: str | Callable[[PIL.Image.Image], PIL.Image.Image],
) -> list[PIL.Image.Image]:
    """Images -> `size` (W, H) with a built-in upscaler ("None" and "Lanczos": Lanczos, "Nearest"), or with a
    model (a function image -> image at its own factor) applied until the image covers `size` (at most
    three times) and then resized with Lanczos, as A1111's `Upscaler.upscale` and `images.resize_image` do."""
    from PIL.Image import Resampling

    out = []
    for image in images:
        if callable(upscaler):
            for _ in range(3):
                if image.width >= size[0] and image.height >= size[1]:
                    break
                before = image.size
                image = upscaler(image)
                if image.size == before:
                    break
            resample = Resampling.LANCZOS
        else:
            resample = Resampling.NEAREST if upscaler == "Nearest" else Resampling.LANCZOS
        out.append(image if image.size == size else image.resize(size, resample=resample))
    return out


def load_upscaler(
    path: Path, *, allow_pickle: bool = False, device: Any = "cpu"
) -> Callable[[PIL.Image.Image], PIL.Image.Image]:
    """An ESRGAN-family upscaler model file (RealESRGAN, 4x-UltraSharp, SwinIR, ... as `spandrel` reads them;
    InvokeAI's and ComfyUI's loader) as a function image -> image at the model's own factor.

    Only `.safetensors` unless `allow_pickle` (spandrel's restricted unpickler reads `.pth` then). Raises
    `InputError` naming the file as given when spandrel is not installed, or the file is not an upscaler."""
    if path.suffix.lower() != ".safetensors" and not allow_pickle:
        raise InputError(
            f"upscaler {path.name} is a pickle file ({path.suffix}); use its .safetensors version, or pass "
            "--allow-pickle for files you trust"
        )
    try:
        import spandrel
    except ImportError:
        raise InputError(
            f"upscaler {path.name} is a model file, which needs spandrel: pip install 'sdlab[upscalers]'"
        ) from None
    try:
        model = spandrel.ModelLoader(device=device).load_from_file(str(path))
    except Exception as err:  # spandrel's UnsupportedModelError and file errors: one sentence
        raise InputError(
            f"upscaler {path.name} is not an image upscaler spandrel can read ({type(err).__name__})"
        ) from None
    if not isinstance(model, spandrel.ImageModelDescriptor) or model.scale < 2:
        raise InputError(f"upscaler {path.name} is a {model.architecture.name} model, not an upscaler")
    model.eval()

    def upscale(image: PIL.Image.Image) -> PIL.Image.Image:
        import numpy as np
        import PIL.Image
        import torch

        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
        with torch.no_grad():
            y = model(x.to(model.device, model.dtype)).float().clamp(0, 1)
        array = (y[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
        return PIL.Image.fromarray(array)

    return upscale


def check_upscaler(name: str) -> str:
    """'latent', 'pixel', or 'model' for an upscaler name (a model is a file the caller resolves)."""
    if name in LATENT_UPSCALE_MODES:
        return "latent"
    if name in PIXEL_UPSCALERS:
        return "pixel"
    return "model"


def generate_hires(
    pipe: Pipeline,
    params: SamplingParams,
    hires: HiresParams,
    *,
    upscaler_model: Callable[[PIL.Image.Image], PIL.Image.Image] | None = None,
    vae_decoder: Any = None,
    callback: StepCallback | None = None,
    **generate_kwargs: Any,
) -> GenerationResult:
    """Text-to-image with the hires fix (see the module doc). `params` are the first pass's; `hires` checked
    settings; `upscaler_model` the model when `hires.hr_upscaler` names one (`load_upscaler`).

    Returns the second pass's result: images at the hires size, with `params` (the first pass's, resolved)
    and `hires` (the settings as they ran) for the recipe; `unet_evaluations` counts both passes. The step
    `callback` sees both passes as one run (step indices continue). Raises `InputError` for bad settings,
    and for an init image (A1111's hires fix is text-to-image's)."""
    import torch

    from sdlab.sampling.loop import generate

    if params.init_image is not None:
        raise InputError(
            "the hires fix applies to text-to-image; leave out the init image, or the hr_ settings"
        )
    kind = check_upscaler(hires.hr_upscaler)
    if kind == "model" and upscaler_model is None:
        raise InputError(
            f"unknown hr_upscaler {hires.hr_upscaler!r}; choose one of: {', '.join(BUILT_IN_UPSCALERS)}, or an "
            "upscaler model's name"
        )
    first_total = [0]

    def first_callback(step: int, total: int, t: Any, latents: torch.Tensor) -> None:
        first_total[0] = total
        if callback is not None:
            callback(step, total + second_steps, t, latents)

    def second_callback(step: int, total: int, t: Any, latents: torch.Tensor) -> None:
        if callback is not None:
            callback(first_total[0] + step, first_total[0] + total, t, latents)

    # 1. The sizes, checked before any work; then the first pass at the asked size (its images decoded by the
    #    model's VAE: a pixel upscaler needs them)
    resolved = params.resolve(pipe.recommended, _scheduler_name(pipe))
    second_steps = hires.hr_second_pass_steps or resolved.num_inference_steps
    factor = pipe.vae_scale_factor
    width, height = resolved.width or pipe.default_size, resolved.height or pipe.default_size
    up_w, up_h, crop_x, crop_y = target_size(width, height, hires, factor)
    total, strength = second_pass_schedule(second_steps, hires.hr_denoising_strength)
    trained = pipe.scheduler_config.get("num_train_timesteps", 1000)
    if total > trained:
        raise InputError(
            f"{second_steps} hires steps at hr_denoising_strength {hires.hr_denoising_strength:g} need a schedule of "
            f"{total} steps, more than the model's {trained} noise levels; raise the strength or lower the hires steps"
        )
    first = generate(pipe, params, callback=first_callback, **generate_kwargs)
    if first.stopped_at_step is not None:
        return replace(first, hires=hires.hires_settings())
    p = first.params

    # 2. Upscale: the latents, or the pixels (encoded again by the second pass)
    if kind == "latent":
        init: Any = upscale_latents(first.latents, (up_h // factor, up_w // factor), hires.hr_upscaler)
        cx, cy = crop_x // factor, crop_y // factor
        init = init[:, :, cy // 2 : init.shape[2] - (cy - cy // 2), cx // 2 : init.shape[3] - (cx - cx // 2)]
    else:
        import numpy as np

        big = upscale_images(first.images, (up_w, up_h), upscaler_model or hires.hr_upscaler)
        box = _crop_box(up_w, up_h, crop_x, crop_y)
        pixels = np.stack([np.asarray(image.crop(box), dtype=np.float32) / 255 for image in big])
        init = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # (B, 3, H, W) in [0, 1]

    # 3. The second pass: image-to-image at the hires size, exactly `second_steps` steps, each image with the
    #    first pass's prompt (or the hires prompt) and seed
    batch = len(first.images)
    second_params = p.replace(
        prompt=[hires.hr_prompt] * batch if hires.hr_prompt else first.prompts,
        negative_prompt=[hires.hr_negative_prompt] * batch if hires.hr_negative_prompt else first.negative_prompts,
        num_images_per_prompt=1,
        seed=first.seeds,
        scheduler=hires.hr_scheduler or p.scheduler,
        num_inference_steps=total,
        strength=strength,
        init_image=init,
        height=None,
        width=None,
        original_size=params.original_size,  # SDXL: unless given, the hires size, as A1111's hires conds
        target_size=params.target_size,
    )  # fmt: skip
    second = generate(
        pipe, second_params, vae_decoder=vae_decoder, callback=second_callback, **generate_kwargs
    )
    return replace(
        second,
        prompts=first.prompts,
        negative_prompts=first.negative_prompts,
        params=p.replace(
            original_size=params.original_size, target_size=params.target_size
        ),  # SDXL: as given
        unet_evaluations=first.unet_evaluations + second.unet_evaluations,
        stopped_at_step=None if second.stopped_at_step is None else first_total[0] + second.stopped_at_step,
        hires=hires.hires_settings(),
    )


def _crop_box(up_w: int, up_h: int, crop_x: int, crop_y: int) -> tuple[int, int, int, int]:
    """The pixel box left after cropping `crop_*` pixels, half on each side (A1111 crops latent cells)."""
    return (crop_x // 2, crop_y // 2, up_w - (crop_x - crop_x // 2), up_h - (crop_y - crop_y // 2))


def _scheduler_name(pipe: Pipeline) -> str:
    from sdlab.sampling.schedulers import scheduler_name_from_config

    return scheduler_name_from_config(pipe.scheduler_config)


__all__ = [
    "DEFAULT_UPSCALER", "HiresParams", "LATENT_UPSCALE_MODES", "PIXEL_UPSCALERS", "generate_hires",
    "load_upscaler", "second_pass_schedule", "target_size", "upscale_images", "upscale_latents",
]  # fmt: skip
