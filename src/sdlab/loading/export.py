"""Writing a `Pipeline` back to one `.safetensors` file in the original CompVis / A1111 key layout.

This is the inverse of `single_file.load_single_file`. The key mapping is ported from diffusers'
`scripts/convert_diffusers_to_original_stable_diffusion.py` (Apache-2.0, huggingface/diffusers), rewritten
to derive block indices from the config instead of hard-coding four blocks, so it also serves the tiny
test models, and to read the VAE attention names diffusers uses today (`to_q`, ..., `to_out.0`).

Layout of the file:
    model.diffusion_model.*            UNet (openaimodel.UNetModel names)
    first_stage_model.*                VAE  (ldm AutoencoderKL names; mid-block attention as 1x1 convs)
    cond_stage_model.transformer.*     OpenAI CLIP text model (SD 1.x), transformers names
    cond_stage_model.model.*           OpenCLIP text tower (SD 2.x), open_clip names, q/k/v fused
    conditioner.embedders.0.transformer.*   SDXL: CLIP ViT-L, transformers names
    conditioner.embedders.1.model.*         SDXL: OpenCLIP bigG, open_clip names, with `text_projection`
    conditioner.embedders.0.model.*         the SDXL refiner's bigG (its only text encoder)
(SDXL's UNet adds `label_emb.0.0` / `label_emb.0.2`, diffusers' `add_embedding.linear_1` / `linear_2`.)

SD 2.x files written here hold the 23 text layers diffusers keeps; the unused 24th layer and the
`text_projection` of the original OpenCLIP model are not part of a `Pipeline` and are not written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from sdlab.atomic import atomic_path
from sdlab.errors import InputError

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from sdlab.pipeline import Pipeline

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."

# (diffusers, original); from the diffusers script's `unet_conversion_map`.
_UNET_TOP = {
    "time_embedding.linear_1.weight": "time_embed.0.weight",
    "time_embedding.linear_1.bias": "time_embed.0.bias",
    "time_embedding.linear_2.weight": "time_embed.2.weight",
    "time_embedding.linear_2.bias": "time_embed.2.bias",
    "conv_in.weight": "input_blocks.0.0.weight",
    "conv_in.bias": "input_blocks.0.0.bias",
    "conv_norm_out.weight": "out.0.weight",
    "conv_norm_out.bias": "out.0.bias",
    "conv_out.weight": "out.2.weight",
    "conv_out.bias": "out.2.bias",
    # SDXL's added embedding (pooled text and size ids); `unet_conversion_map` of the SDXL script
    "add_embedding.linear_1.weight": "label_emb.0.0.weight",
    "add_embedding.linear_1.bias": "label_emb.0.0.bias",
    "add_embedding.linear_2.weight": "label_emb.0.2.weight",
    "add_embedding.linear_2.bias": "label_emb.0.2.bias",
}
# ResBlock sub-layers: `unet_conversion_map_resnet`.
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
# VAE mid-block attention: `vae_conversion_map_attn`, with today's diffusers attention names.
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# OpenCLIP text tower: the diffusers script's `textenc_conversion_lst`, anchored per key instead of by regex.
_OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def save_single_file(pipeline: Pipeline, path: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write the pipeline's UNet, VAE and text encoder to `path` (a `.safetensors` file), atomically.

    `dtype` casts floating-point weights (e.g. `torch.float16` halves the file); by default they are
    written as they are. The file appears complete or not at all (`sdlab.atomic`).
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise InputError(f"Output {path} must end in .safetensors; sdlab never writes pickle checkpoints.")
    if not path.parent.is_dir():
        raise InputError(f"Output folder {path.parent} does not exist.")

    state_dict = original_state_dict(
        pipeline.unet, pipeline.vae, pipeline.text_encoder, pipeline.text_encoder_2
    )
    tensors = {}
    for key, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[key] = tensor.contiguous()  # no copy for the weights as they are: a full SD is gigabytes

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    return path


def original_state_dict(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel | None,
    text_encoder_2: CLIPTextModelWithProjection | None = None,
) -> dict[str, torch.Tensor]:
    """All components' weights under their original single-file keys (works on meta tensors too).

    With `text_encoder_2` (SDXL) the text encoders go under `conditioner.embedders.*`, as SDXL's original
    files (and A1111's and ComfyUI's saves) hold them; `text_encoder` is None for the refiner."""
    state_dict: dict[str, torch.Tensor] = {}
    for key, value in unet_to_original(unet.state_dict(), unet.config).items():
        state_dict[UNET_PREFIX + key] = value
    for key, value in vae_to_original(vae.state_dict(), vae.config).items():
        state_dict[VAE_PREFIX + key] = value
    if text_encoder_2 is not None:
        embedder = 0
        if text_encoder is not None:
            for key, value in clip_to_original(text_encoder.state_dict()).items():
                state_dict["conditioner.embedders.0.transformer." + key] = value
            embedder = 1
        for key, value in open_clip_to_original(text_encoder_2.state_dict()).items():
            state_dict[f"conditioner.embedders.{embedder}.model." + key] = value
        return state_dict
    text_state_dict = text_encoder.state_dict()
    if is_open_clip(text_encoder):
        for key, value in open_clip_to_original(text_state_dict).items():
            state_dict[OPEN_CLIP_PREFIX + key] = value
    else:
        for key, value in clip_to_original(text_state_dict).items():
            state_dict[CLIP_PREFIX + key] = value
    return state_dict


def is_open_clip(text_encoder: CLIPTextModel) -> bool:
    """SD 2.x's OpenCLIP text tower uses exact GELU; OpenAI's CLIP (SD 1.x) uses QuickGELU."""
    return text_encoder.config.hidden_act == "gelu"


def unet_to_original(state_dict: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Diffusers UNet2DConditionModel keys -> openaimodel.UNetModel keys, for any number of blocks."""
    per_block = config["layers_per_block"]
    if not isinstance(per_block, int):
        raise InputError(
            f"Cannot export a UNet with per-block layer counts {per_block}; SD UNets use one count."
        )
    # openaimodel numbers every layer of a level in one flat list: L resnets (+ attentions) then a
    # downsampler on the way down, L + 1 resnets (+ attentions) then an upsampler on the way up.
    step = per_block + 1
    up_with_attention = {
        int(k.split(".")[1]) for k in state_dict if re.match(r"up_blocks\.\d+\.attentions\.", k)
    }

    def convert(key: str) -> str:
        if key in _UNET_TOP:
            return _UNET_TOP[key]
        if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            return f"input_blocks.{step * block + layer + 1}.{_unet_layer(kind, rest)}"
        if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            return f"input_blocks.{step * (int(m[1]) + 1)}.0.op.{m[2]}"
        # middle_block is [ResBlock, SpatialTransformer, ResBlock]
        if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            return f"middle_block.{2 * int(m[1])}.{_resnet_names(m[2])}"
        if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            return f"middle_block.1.{m[1]}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            return f"output_blocks.{step * block + layer}.{_unet_layer(kind, rest)}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
            block = int(m[1])
            # the upsampler follows the last ResBlock, and its SpatialTransformer when the level has one
            position = 2 if block in up_with_attention else 1
            return f"output_blocks.{step * block + per_block}.{position}.{m[2]}"
        raise InputError(f"Cannot export UNet weight {key!r}: it has no place in the original SD layout.")

    return {convert(k): v for k, v in state_dict.items()}


def _unet_layer(kind: str, rest: str) -> str:
    """Within one flat openaimodel layer, the ResBlock is module 0 and the SpatialTransformer module 1."""
    return f"1.{rest}" if kind == "attentions" else f"0.{_resnet_names(rest)}"


def _resnet_names(rest: str) -> str:
    name, _, tail = rest.partition(".")
    return f"{_UNET_RESNET.get(name, name)}.{tail}"


def vae_to_original(state_dict: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Diffusers AutoencoderKL keys -> ldm AutoencoderKL keys; mid-block attention becomes 1x1 convs."""
    num_up = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = key.replace("conv_norm_out", "norm_out")
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{_vae_resnet(m[3])}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
            new = f"encoder.down.{m[1]}.downsample.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            # ldm numbers decoder levels from the lowest resolution up; diffusers from the top down
            new = f"decoder.up.{num_up - 1 - int(m[1])}.block.{m[2]}.{_vae_resnet(m[3])}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
            new = f"decoder.up.{num_up - 1 - int(m[1])}.upsample.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{_vae_resnet(m[3])}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            if m[2] not in _VAE_ATTENTION:
                raise InputError(
                    f"Cannot export VAE weight {key!r}: it has no place in the original SD layout."
                )
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
            if m[3] == "weight" and m[2] != "group_norm":
                value = value.reshape(*value.shape, 1, 1)  # Linear (out, in) -> Conv2d 1x1 (out, in, 1, 1)
        elif not re.fullmatch(
            r"(encoder|decoder)\.(conv_in|conv_out|norm_out)\.\w+|(post_)?quant_conv\.\w+", new
        ):
            raise InputError(f"Cannot export VAE weight {key!r}: it has no place in the original SD layout.")
        out[new] = value
    return out


def _vae_resnet(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


def clip_to_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI CLIP keeps transformers' names; only the `text_model.` level must be present.

    transformers >= 5.6 flattened `CLIPTextModel`, so its keys may lack the `text_model.` prefix that the
    original checkpoints (and diffusers' detection key) carry.
    """
    return {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state_dict.items()}


def open_clip_to_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel(WithProjection) keys -> open_clip text-tower keys, with q/k/v fused into
    `in_proj`, and the projection as open_clip's `text_projection` (transposed)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key == "text_projection.weight":  # SDXL's bigG: open_clip keeps the (width, projection) matrix
            out["text_projection"] = value.T
            continue
        key = key.removeprefix("text_model.")
        if key in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[key]] = value
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if m is None:
            raise InputError(
                f"Cannot export text-encoder weight {key!r}: it has no place in the OpenCLIP layout."
            )
        layer, name, kind = m[1], m[2], m[3]
        prefix = f"transformer.resblocks.{layer}"
        if q := re.fullmatch(r"self_attn\.([qkv])_proj", name):
            fused.setdefault(f"{prefix}.attn.in_proj_{kind}", {})[q[1]] = value
        elif name in _OPEN_CLIP_LAYER:
            out[f"{prefix}.{_OPEN_CLIP_LAYER[name]}.{kind}"] = value
        else:
            raise InputError(
                f"Cannot export text-encoder weight {key!r}: it has no place in the OpenCLIP layout."
            )
    for key, parts in fused.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise InputError(f"Cannot export text encoder: {key} lacks one of its q, k, v projections.")
        # torch.nn.MultiheadAttention stacks the projections in q, k, v order
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out
