"""A model's parts from files of their own: a VAE (A1111's `models/VAE`, ComfyUI's `models/vae`, a
diffusers `vae/` folder) and text encoders (ComfyUI's `models/clip`: `clip_l.safetensors`,
`clip_g.safetensors`), in place of the model's own or where its checkpoint has none (ComfyUI saves
UNet-only and UNet-plus-CLIP files; SDXL fine-tunes are often shared without a VAE, beside the
fp16-fix VAE).

The part takes its architecture from the model's config (a diffusers folder's `vae/config.json`, or the
config sdlab picked for a single file), and its weights from the file in any of the layouts people share:

- VAE: the original (CompVis/A1111) keys `encoder.down.0.block.0...`, with or without
  `first_stage_model.`, converted by diffusers' `convert_ldm_vae_checkpoint`; or diffusers' own keys;
- text encoders: transformers' keys (`text_model.encoder.layers...`, with or without `text_model.`,
  plus `text_projection.weight` for bigG), as ComfyUI and diffusers folders store them; the original
  layouts (`transformer.text_model...` for CLIP ViT-L, OpenCLIP's `transformer.resblocks...` for bigG),
  converted by diffusers' `create_diffusers_clip_model_from_ldm`.

A diffusers component folder (with its own `config.json`) loads with its own config instead: the
fp16-fix VAE's folder says `force_upcast: false`, so it decodes in float16 without the upcast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import (
    convert_ldm_vae_checkpoint,
    create_diffusers_clip_model_from_ldm,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from sdlab.errors import InputError
from sdlab.loading.checkpoint import read_state_dict

PARTS = ("vae", "text_encoder", "text_encoder_2")
FLAGS = {"vae": "--vae", "text_encoder": "--text-encoder", "text_encoder_2": "--text-encoder-2"}
WHAT = {"vae": "VAE", "text_encoder": "text encoder", "text_encoder_2": "second text encoder"}
# where the original layouts keep each encoder in a whole SDXL checkpoint, to reuse diffusers' converter
_LDM_PREFIXES = {
    "text_encoder": "conditioner.embedders.0.transformer.",
    "text_encoder_2": "conditioner.embedders.1.model.",
}
_IGNORED = ("logit_scale", "vision_model.", "visual_projection.", "text_model.embeddings.position_ids",
            "embeddings.position_ids")  # fmt: skip


def check_parts(parts: dict[str, str | Path | None]) -> dict[str, Path]:
    """The given parts as paths, each checked to exist; `InputError` naming the flag otherwise."""
    checked = {}
    for name, source in parts.items():
        if source is None:
            continue
        path = Path(source).expanduser()
        if not path.exists():
            raise InputError(f"{FLAGS[name]} {source}: no such file or folder")
        checked[name] = path
    return checked


def load_part(
    name: str, source: Path, config_root: Path, *, dtype: torch.dtype, allow_pickle: bool = False
) -> torch.nn.Module:
    """Part `name` ("vae", "text_encoder" or "text_encoder_2") from `source`, a weights file or a diffusers
    component folder, with the architecture in `config_root/name/config.json`; in `dtype`, on the CPU, eval.

    Raises `InputError` with one sentence when the model has no such part, or the file's weights do not
    make it (missing weights, other shapes, another kind of file)."""
    config_file = config_root / name / "config.json"
    if not config_file.is_file():
        raise InputError(f"{FLAGS[name]} {source}: this model has no {WHAT[name]} to replace")
    if source.is_dir():
        model = _from_folder(name, source, dtype)
        _check_fits(name, source, dict(model.config), json.loads(config_file.read_text()))
        return model
    state = read_state_dict(source, allow_pickle=allow_pickle, dtype=dtype)
    if name == "vae":
        model = _vae(state, config_root, source)
    else:
        model = _text_encoder(name, state, config_root, source, dtype)
    meta = [key for key, value in model.state_dict().items() if value.is_meta]
    if meta:
        raise InputError(f"{FLAGS[name]} {source} lacks {len(meta)} {WHAT[name]} weights (first: {meta[0]})")
    return torch.nn.Module.to(model, dtype).eval()  # not diffusers' `to`, which warns on every cast


# what a part from a folder (with its own config) must share with the model's for the rest of it to read it
_FITS = {"vae": ("latent_channels", "block_out_channels"), "text_encoder": ("hidden_size",),
         "text_encoder_2": ("hidden_size", "projection_dim")}  # fmt: skip


def _check_fits(name: str, source: Path, theirs: dict, ours: dict) -> None:
    for key in _FITS[name]:
        a, b = theirs.get(key), ours.get(key)
        if key == "block_out_channels":  # the number of levels sets the VAE's factor; widths may differ
            a, b = len(a or ()), len(b or ())
        if a != b:
            raise InputError(
                f"{FLAGS[name]} {source} does not fit this model's {WHAT[name]}: its {key} is {a}, the model's {b}"
            )


def _from_folder(name: str, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    cls = {
        "vae": AutoencoderKL,
        "text_encoder": CLIPTextModel,
        "text_encoder_2": CLIPTextModelWithProjection,
    }[name]
    if not (folder / "config.json").is_file():
        raise InputError(
            f"{FLAGS[name]} {folder}: a folder must be a diffusers component folder with config.json"
        )
    try:
        if cls is AutoencoderKL:
            return cls.from_pretrained(folder, local_files_only=True, dtype=dtype).eval()
        return cls.from_pretrained(folder, local_files_only=True).to(dtype).eval()
    except (OSError, ValueError, RuntimeError) as err:
        raise InputError(f"{FLAGS[name]} {folder}: {str(err).splitlines()[0]}") from err


def _vae(state: dict[str, torch.Tensor], config_root: Path, source: Path) -> AutoencoderKL:
    config = AutoencoderKL.load_config(config_root / "vae")
    if not any(key.startswith("encoder.down_blocks.") for key in state):  # the original layout
        state = convert_ldm_vae_checkpoint(state, config)
    with init_empty_weights():
        model = AutoencoderKL.from_config(config)
    return _assign(model, state, "vae", source)


def _text_encoder(
    name: str, state: dict[str, torch.Tensor], config_root: Path, source: Path, dtype: torch.dtype
) -> torch.nn.Module:
    cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
    if any(key.startswith(("transformer.resblocks.", "transformer.text_model.")) for key in state):
        # the original layouts: put the file where a whole checkpoint keeps it, and use diffusers' converter
        inner = (
            {k.removeprefix("transformer."): v for k, v in state.items()} if name == "text_encoder" else state
        )
        prefixed = {_LDM_PREFIXES[name] + k: v for k, v in inner.items()}
        try:
            return create_diffusers_clip_model_from_ldm(
                cls,
                prefixed,
                subfolder=name,
                config=str(config_root),
                local_files_only=True,
                torch_dtype=dtype,
            )
        except (ValueError, KeyError, RuntimeError) as err:
            raise InputError(f"{FLAGS[name]} {source} is not a {WHAT[name]} for this model ({err})") from err
    config = CLIPTextConfig.from_pretrained(config_root / name, local_files_only=True)
    with init_empty_weights():
        model = cls(config)
    own = set(model.state_dict())
    # transformers 5 keeps CLIPTextModel's layers without the "text_model." level; files have it, or not
    state = {_own_key(key, own): value for key, value in state.items() if not key.startswith(_IGNORED)}
    return _assign(model, state, name, source)


def _own_key(key: str, own: set[str]) -> str:
    if key in own:
        return key
    if f"text_model.{key}" in own:
        return f"text_model.{key}"
    return key.removeprefix("text_model.")


def _assign(model: Any, state: dict[str, torch.Tensor], name: str, source: Path) -> Any:
    """`state` into the empty (meta) `model` as its weights; one sentence for what does not fit."""
    own = model.state_dict()
    unexpected = [key for key in state if key not in own]
    missing = [key for key in own if key not in state and own[key].is_meta]
    if missing:
        hint = f"; it has {unexpected[0]}, so is it another part's file?" if unexpected else ""
        raise InputError(
            f"{FLAGS[name]} {source} lacks {len(missing)} {WHAT[name]} weights (first: {missing[0]}){hint}"
        )
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise InputError(
                f"{FLAGS[name]} {source} does not fit this model's {WHAT[name]}: {key} is {tuple(value.shape)}, "
                f"the model's is {tuple(own[key].shape)}"
            )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False, assign=True)
    return model
