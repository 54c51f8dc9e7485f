"""LoRA files: low-rank adapters for the UNet and text encoder, in the format diffusers and A1111 share.

Files of LyCORIS kinds peft's LoRA layers do not express (LoCon's CP core, LoHa, LoKr, DoRA) are merged
into the weights with A1111's maths and restored afterwards (`sdlab.lycoris`). Plain LoRA files go
through diffusers' own LoRA loaders (`StableDiffusionLoraLoaderMixin`, and for SDXL
`StableDiffusionXLLoraLoaderMixin`), which also convert kohya/A1111 files: SD 1.x's `lora_unet_*` /
`lora_te_*`, and SDXL's `lora_unet_*` in the original UNet's block names (`input_blocks_4_1_...`, mapped
by the UNet's config), `lora_te1_*` (CLIP ViT-L) and `lora_te2_*` (OpenCLIP bigG); saving writes `pytorch_lora_weights.safetensors` exactly as diffusers'
training examples do, so `StableDiffusionPipeline.load_lora_weights` reads what sdlab trains.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdlab import lycoris
from sdlab.atomic import atomic_path
from sdlab.errors import InputError
from sdlab.loading.checkpoint import read_state_dict
from sdlab.pipeline import Pipeline

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # attention projections, as diffusers' LoRA scripts
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """ "FILE" or "FILE:WEIGHT" -> (file, weight)."""
    path, _, weight = spec.rpartition(":") if ":" in Path(spec).name else (spec, "", "")
    if not weight:
        return spec, 1.0
    try:
        return path, float(weight)
    except ValueError:
        raise InputError(
            f"--lora {spec}: the weight after ':' must be a number, e.g. style.safetensors:0.8"
        ) from None


def load_lora(pipe: Pipeline, path: str | Path, weight: float = 1.0, *, allow_pickle: bool = False) -> str:
    """Add the LoRA in `path` to `pipe`'s UNet (and text encoders, where the file has layers for them)
    at `weight`. Several LoRAs stack; each keeps its own weight. Returns the adapter's name.

    Raises `InputError` for a file that is not a LoRA for this model (the model is left as it was)."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

    path = Path(path)
    tensors = read_state_dict(path, allow_pickle=allow_pickle)  # safetensors; pickles only weights_only
    taken = {name for module in _modules(pipe) for name in _weights(module)} | set(_merged(pipe))
    name = next(f"lora{i}-{path.stem}" for i in range(len(taken) + 1) if f"lora{i}-{path.stem}" not in taken)
    if lycoris.needs_merging(tensors):  # LoCon's CP core, LoHa, LoKr, DoRA: A1111's maths, merged
        try:
            _merged(pipe)[name] = lycoris.merge(pipe, tensors, weight)
        except InputError as err:
            raise InputError(f"{path} is not a network sdlab can apply to this model: {err}") from None
        return name
    try:
        if pipe.is_sdxl:  # also maps kohya's SDXL block names by the UNet's config
            loader = StableDiffusionXLLoraLoaderMixin
            state, alphas = loader.lora_state_dict(dict(tensors), unet_config=pipe.unet.config)
        else:
            loader = StableDiffusionLoraLoaderMixin
            state, alphas = loader.lora_state_dict(dict(tensors))  # also converts kohya/A1111 keys
        encoders = [
            (n, getattr(pipe, n)) for n in ("text_encoder", "text_encoder_2") if getattr(pipe, n) is not None
        ]
        unet_keys = [k for k in state if k.startswith("unet.")]
        text_keys = {n: [k for k in state if k.startswith(n + ".")] for n, _ in encoders}
        others = sorted({k.split(".")[0] for k in state} - {"unet", *text_keys})
        if others:
            raise ValueError(f"it has layers for {others[0]}, which this {pipe.family} model does not have")
        if not unet_keys and not any(text_keys.values()):
            raise ValueError("it has no unet. or text_encoder. layers")
        if unet_keys:
            loader.load_lora_into_unet(state, alphas, unet=pipe.unet, adapter_name=name)
            _activate(pipe.unet, name, weight)
        for prefix, encoder in encoders:
            if text_keys[prefix]:
                _load_into_text_encoder(state, alphas, encoder, name, prefix)
                _activate(encoder, name, weight)
    except (ValueError, KeyError, IndexError, RuntimeError) as err:
        _discard(pipe, name)  # a file that failed half-way leaves no layers behind
        if isinstance(err, torch.OutOfMemoryError):
            raise
        raise InputError(f"{path} is not a LoRA for this model: {str(err).splitlines()[0]}") from err
    except BaseException:
        _discard(pipe, name)
        raise
    return name


def unload_lora(pipe: Pipeline, name: str) -> None:
    """Remove the LoRA `load_lora` added as `name`; the others keep their weights.

    When none is left, the adapter layers themselves are taken out (diffusers' `unload_lora`), so the
    model computes exactly what it did before any LoRA was loaded.
    """
    from diffusers.utils.peft_utils import delete_adapter_layers, recurse_remove_peft_layers

    if name in _merged(pipe):
        _merged(pipe).pop(name).restore()
        return
    for module in _modules(pipe):
        weights = _weights(module)
        if name not in weights:
            continue
        del weights[name]
        if weights:
            delete_adapter_layers(module, name)
            getattr(module, "peft_config", {}).pop(name, None)
            _activate_all(module, weights)
        else:
            recurse_remove_peft_layers(module)
            for attribute in ("peft_config", "_hf_peft_config_loaded"):
                if attribute in vars(module):  # set on the instance (transformers keeps a class default)
                    delattr(module, attribute)


def _merged(pipe: Pipeline) -> dict[str, lycoris.Merged]:
    """The networks merged into `pipe`'s weights (`sdlab.lycoris`), by name, in the order they came."""
    if not hasattr(pipe.unet, "_sdlab_merged"):
        pipe.unet._sdlab_merged = {}
    return pipe.unet._sdlab_merged


def _modules(pipe: Pipeline) -> list[torch.nn.Module]:
    """The modules a LoRA can adapt: the UNet and each text encoder."""
    return [pipe.unet, *(encoder for _, encoder in pipe.text_encoders)]


def _discard(pipe: Pipeline, name: str) -> None:
    for module in _modules(pipe):
        if name in getattr(module, "peft_config", {}) and name not in _weights(module):
            module._sdlab_lora_weights = {**_weights(module), name: 0.0}
    unload_lora(pipe, name)


def add_text_encoder_adapter(text_encoder: torch.nn.Module, config, name: str = "default") -> None:
    """peft's own injection: transformers' `add_adapter` would demand a newer peft than PyPI has."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, text_encoder, adapter_name=name)


def _load_into_text_encoder(
    state: dict, alphas: dict | None, text_encoder: torch.nn.Module, name: str, prefix: str = "text_encoder"
) -> None:
    """diffusers' `_load_lora_into_text_encoder` for the layers under `prefix` ("text_encoder" or SDXL's
    "text_encoder_2"), with peft injecting the layers instead of transformers."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from diffusers.utils.peft_utils import _create_lora_config
    from peft import set_peft_model_state_dict

    prefix += "."
    state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    state = convert_state_dict_to_peft(convert_state_dict_to_diffusers(state))
    if not hasattr(text_encoder, "text_model"):  # transformers 5 flattened CLIPTextModel
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    ranks = {k: v.shape[1] for k, v in state.items() if k.endswith("lora_B.weight")}
    if alphas:
        alphas = {k.removeprefix(prefix): v for k, v in alphas.items() if k.startswith(prefix)}
    config = _create_lora_config(state, alphas or None, None, ranks, is_unet=False)
    add_text_encoder_adapter(text_encoder, config, name)
    result = set_peft_model_state_dict(text_encoder, state, adapter_name=name)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k]
    if missing:
        raise ValueError(f"layers not found in the text encoder, e.g. {missing[0]}")


def _weights(module: torch.nn.Module) -> dict[str, float]:
    return getattr(module, "_sdlab_lora_weights", {})


def _activate(module: torch.nn.Module, name: str, weight: float) -> None:
    """Make every loaded adapter active, each at its own weight."""
    _activate_all(module, {**_weights(module), name: weight})


def _activate_all(module: torch.nn.Module, weights: dict[str, float]) -> None:
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    set_weights_and_activate_adapters(module, list(weights), list(weights.values()))
    module._sdlab_lora_weights = weights


def save_lora(folder: str | Path, pipe: Pipeline, *, text_encoders: bool = False) -> Path:
    """`folder/pytorch_lora_weights.safetensors` from the peft adapters on `pipe`'s UNet (and with
    `text_encoders` on its text encoders), as diffusers' LoRA training scripts write it: the keys
    `unet.*`, `text_encoder.*` and, for SDXL, `text_encoder_2.*` (`StableDiffusionXLPipeline.save_lora_weights`)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import get_peft_model_state_dict

    def layers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        found = convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
        # transformers 5 flattened CLIPTextModel; other tools expect the "text_model." level
        return {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in found.items()}

    unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    encoders = {}
    if text_encoders:
        names = ["text_encoder", "text_encoder_2"] if pipe.is_sdxl else ["text_encoder"]
        encoders = {f"{name}_lora_layers": layers(getattr(pipe, name)) for name in names}
    saver = StableDiffusionXLPipeline if pipe.is_sdxl else StableDiffusionPipeline
    target = Path(folder) / "pytorch_lora_weights.safetensors"
    with atomic_path(target) as tmp:  # complete or absent
        saver.save_lora_weights(
            tmp.parent,
            unet_lora_layers=unet_layers,
            weight_name=tmp.name,
            safe_serialization=True,
            **encoders,
        )
    return target
