"""Loading a diffusers-format model folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/).

SDXL folders add text_encoder_2/ and tokenizer_2/; the refiner has those in place of text_encoder/ and
tokenizer/. model_index.json's `force_zeros_for_empty_prompt` is kept (diffusers' SDXL pipelines' flag).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sdlab.atomic import atomic_path
from sdlab.errors import InputError
from sdlab.loading.tokenizer import OPEN_CLIP_PAD_TOKEN, clip_tokenizer
from sdlab.pipeline import Pipeline
from sdlab.sampling.params import SamplingParams

COMPONENTS = ("unet", "vae", "scheduler")  # and text_encoder/, text_encoder_2/ or both
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
SDLAB_FILE = "sdlab.json"  # optional: {"sampling": {"guidance_scale": 3.0, "num_inference_steps": 30}}
PICKLE_WEIGHTS = ("diffusion_pytorch_model.bin", "pytorch_model.bin")


def _correct_old_unet_config(unet: UNet2DConditionModel) -> None:
    """As `StableDiffusionPipeline.__init__`: a UNet config saved by diffusers < 0.9 with a sample size
    under 64 meant 64 (512-pixel SD 1.x); the default image size follows from it."""
    from packaging.version import Version

    saved = unet.config.get("_diffusers_version")
    size = unet.config.get("sample_size")
    if (
        saved
        and Version(Version(saved).base_version) < Version("0.9.0")
        and isinstance(size, int)
        and size < 64
    ):
        unet.register_to_config(sample_size=64)


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


def load_folder(
    path: Path,
    *,
    allow_pickle: bool = False,
    dtype: torch.dtype = torch.float32,
    parts: dict[str, Path] | None = None,
) -> Pipeline:
    """Each component with its own from_pretrained, offline; safetensors only unless `allow_pickle`.

    diffusers and transformers load `.bin` weights with `torch.load(weights_only=True)`; sdlab still
    refuses them by default, since a pickle is code. `parts` {"vae" | "text_encoder" | "text_encoder_2":
    file or folder} replace the folder's own (`sdlab.loading.parts`).
    """
    from sdlab.loading.parts import load_part

    parts = parts or {}
    for name in COMPONENTS:
        if not (path / name).is_dir():
            raise InputError(f"model folder {path} has no {name}/ subfolder; is it a Stable Diffusion model?")
    encoders = [name for name in TEXT_ENCODERS if (path / name).is_dir()]
    if not encoders:
        raise InputError(
            f"model folder {path} has no text_encoder/ subfolder; is it a Stable Diffusion model?"
        )
    for name in ("unet", "vae", *encoders):
        if name not in parts:
            _check_weights(path / name, allow_pickle)
    index = _model_index(path)
    common = {"local_files_only": True, "dtype": dtype, "use_safetensors": not allow_pickle or None}
    text = {"local_files_only": True, "use_safetensors": common["use_safetensors"]}
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **common)
        vae = None if "vae" in parts else AutoencoderKL.from_pretrained(path, subfolder="vae", **common)
        text_encoder = text_encoder_2 = None
        if "text_encoder" in encoders and "text_encoder" not in parts:
            text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", **text).to(dtype)
        if "text_encoder_2" in encoders and "text_encoder_2" not in parts:
            text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(path / "text_encoder_2", **text).to(
                dtype
            )
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot load the model in {path}: {_first_line(err)}") from err
    given = {
        name: load_part(name, source, path, dtype=dtype, allow_pickle=allow_pickle)
        for name, source in parts.items()
    }
    vae = given.get("vae", vae)
    text_encoder = given.get("text_encoder", text_encoder)
    text_encoder_2 = given.get("text_encoder_2", text_encoder_2)
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    try:
        scheduler_config = json.loads(scheduler_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read {scheduler_file}: {_first_line(err)}") from err
    for module in (unet, vae, text_encoder, text_encoder_2):
        if module is not None:
            module.eval()
    _correct_old_unet_config(unet)
    # diffusers' defaults where model_index.json leaves it out: the base pipeline zeros, img2img does not
    force_zeros = index.get(
        "force_zeros_for_empty_prompt", index.get("_class_name") != "StableDiffusionXLImg2ImgPipeline"
    )
    return Pipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_tokenizer(path / "tokenizer") if text_encoder is not None else None,
        scheduler_config=dict(scheduler_config),
        source=str(path),
        name=path.name,
        recommended=_recommended(path / SDLAB_FILE),
        text_encoder_2=text_encoder_2,
        tokenizer_2=_tokenizer(path / "tokenizer_2", OPEN_CLIP_PAD_TOKEN)
        if text_encoder_2 is not None
        else None,
        force_zeros_for_empty_prompt=bool(force_zeros),
    )


def _model_index(path: Path) -> dict:
    file = path / "model_index.json"
    try:
        index = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read {file}: {_first_line(err)}") from err
    if not isinstance(index, dict):
        raise InputError(f"{file} must hold a JSON object")
    return index


def _recommended(file: Path) -> SamplingParams:
    """The model's recommended sampling package, from sdlab.json beside model_index.json (if any)."""
    if not file.is_file():
        return SamplingParams()
    try:
        settings = json.loads(file.read_text()).get("sampling", {})
        if not isinstance(settings, dict):
            raise AttributeError("'sampling' must be an object")
    except (OSError, json.JSONDecodeError, AttributeError) as err:
        raise InputError(f"cannot read {file}: {_first_line(err)}") from err
    return SamplingParams.recommendation(settings, str(file))


def _tokenizer(folder: Path, pad_token: str | None = None) -> CLIPTokenizer:
    """The folder's own tokenizer when it has one, else the CLIP tokenizer shipped with sdlab (padding
    with `pad_token`, default CLIP's end-of-text; SDXL's second tokenizer pads with "!")."""
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        try:
            return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as err:
            raise InputError(f"cannot load the tokenizer in {folder}: {_first_line(err)}") from err
    return clip_tokenizer() if pad_token is None else clip_tokenizer(pad_token=pad_token)


def _check_weights(folder: Path, allow_pickle: bool) -> None:
    if any(folder.glob("*.safetensors")):
        return
    pickles = [
        p.name for p in folder.iterdir() if p.name in PICKLE_WEIGHTS or p.suffix in (".bin", ".pt", ".ckpt")
    ]
    if pickles and not allow_pickle:
        raise InputError(
            f"{folder} holds only pickle weights ({pickles[0]}), which can run code when loaded; "
            "pass --allow-pickle (allow_pickle=True) if you trust it"
        )
    if not pickles:
        raise InputError(f"{folder} has no weights file (*.safetensors)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def save_folder(
    pipe: Pipeline,
    path: str | Path,
    *,
    weights_dtype: torch.dtype | None = None,
    safe_serialization: bool = True,
) -> Path:
    """Write `pipe` as a diffusers-format folder that `StableDiffusionPipeline.from_pretrained` loads.

    `weights_dtype` (e.g. float16) stores the weights at that precision to halve the size, while the
    configs keep the pipeline's own dtype, so loaders (transformers' dtype="auto" included) bring the
    model back at the precision it runs at. Written into a sibling temporary folder first and renamed
    into place, so `path` is either the complete model or untouched.
    """
    import diffusers

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        names = ("unet", "vae", *(name for name in TEXT_ENCODERS if getattr(pipe, name) is not None))
        for name in names:
            module = getattr(pipe, name)
            if weights_dtype is not None and module.dtype != weights_dtype:
                module = copy.deepcopy(module).to(weights_dtype)
            module.save_pretrained(tmp / name, safe_serialization=safe_serialization)
        for name in names[2:]:
            config_file = tmp / name / "config.json"
            config = json.loads(config_file.read_text())
            for key in ("dtype", "torch_dtype"):
                if key in config:
                    config[key] = str(getattr(pipe, name).dtype).removeprefix("torch.")
            config_file.write_text(json.dumps(config, indent=2) + "\n")
            tokenizer = "tokenizer" + name.removeprefix("text_encoder")
            getattr(pipe, tokenizer).save_pretrained(tmp / tokenizer)
        scheduler_cls = pipe.scheduler_config.get("_class_name", "PNDMScheduler")
        scheduler = getattr(diffusers, scheduler_cls).from_config(pipe.scheduler_config)
        scheduler.save_pretrained(tmp / "scheduler")
        index = {
            "_class_name": _pipeline_class(pipe),
            "_diffusers_version": diffusers.__version__,
            "scheduler": ["diffusers", scheduler_cls],
            "unet": ["diffusers", type(pipe.unet).__name__],
            "vae": ["diffusers", type(pipe.vae).__name__],
        }
        for name in names[2:]:
            tokenizer = "tokenizer" + name.removeprefix("text_encoder")
            index[name] = ["transformers", type(getattr(pipe, name)).__name__]
            index[tokenizer] = ["transformers", type(getattr(pipe, tokenizer)).__name__]
        if pipe.is_sdxl:
            index["force_zeros_for_empty_prompt"] = pipe.force_zeros_for_empty_prompt
            index["requires_aesthetics_score"] = pipe.requires_aesthetics_score
        else:
            index.update(
                feature_extractor=[None, None], requires_safety_checker=False, safety_checker=[None, None]
            )
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        if pipe.recommended.package():
            sdlab = {"sampling": pipe.recommended.to_json()}
            (tmp / SDLAB_FILE).write_text(json.dumps(sdlab, indent=2) + "\n")
    return path


def _pipeline_class(pipe: Pipeline) -> str:
    """The diffusers pipeline class that loads the folder: SD or SDXL, text-to-image or inpainting (the
    refiner's is image-to-image)."""
    if pipe.is_sdxl:
        if pipe.requires_aesthetics_score:
            return "StableDiffusionXLImg2ImgPipeline"
        return "StableDiffusionXLInpaintPipeline" if pipe.is_inpainting_unet else "StableDiffusionXLPipeline"
    return "StableDiffusionInpaintPipeline" if pipe.is_inpainting_unet else "StableDiffusionPipeline"
