"""LyCORIS network files, applied with A1111's maths: LoCon with a CP-decomposed core (`lora_mid`), LoHa
(`hada_*`), LoKr (`lokr_*`), full differences (`diff`), and DoRA's weight decomposition (`dora_scale`)
on any of them. Files of plain LoRA layers go through peft (`sdlab.lora`); these are merged into the
weights instead, and taken out again by restoring the weights they replaced.

For a layer with weight W (out, in[, k, k]), the file's update dW (A1111's `calc_updown` of
`extensions-builtin/Lora/network_*.py`, LyCORIS' own definitions) is scaled by alpha / dim and, with
`dora_scale` m (1, in[, 1, 1]), decomposed as A1111's `apply_weight_decompose`:

    W' = W + weight * (D(W, s dW) - W),   D(W, V) = (W + V) * m / ||W + V||  (per input column)
    W' = W + weight * s * dW               without DoRA

    LoRA  dW = up @ down, or with lora_mid the Tucker core: einsum("n m k l, i n, m j -> i j k l")
    LoHa  dW = (w1a @ w1b) * (w2a @ w2b), each factor optionally Tucker (hada_t1, hada_t2)
    LoKr  dW = kron(w1, w2), each w a matrix or a product (w1a @ w1b), w2 optionally Tucker (lokr_t2)

Layer names follow kohya: `lora_unet_` + the UNet module's diffusers name or its original (SGM/LDM)
name with dots as underscores, `lora_te_` (SD 1.x/2.x), `lora_te1_` / `lora_te2_` (SDXL) + the text
encoder module's transformers name. A file of a LyCORIS kind sdlab does not apply (OFT, BOFT, GLoRA,
(IA)^3, norms) is refused with one sentence naming the kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from sdlab.errors import InputError

if TYPE_CHECKING:
    from sdlab.pipeline import Pipeline

# key suffixes that need merging (plain lora_up/lora_down layers load through peft)
MERGED = (
    "lora_mid.weight",
    "hada_w1_a",
    "lokr_w1",
    "lokr_w1_a",
    "lokr_w2",
    "lokr_w2_a",
    "dora_scale",
    "diff",
)
UNSUPPORTED = {  # suffix -> the kind's name, for the refusal
    "oft_blocks": "OFT", "oft_diag": "OFT", "boft_blocks": "BOFT", "a1.weight": "GLoRA", "on_input": "(IA)^3",
    "w_norm": "a norm-layer network", "b_norm": "a norm-layer network",
}  # fmt: skip


def needs_merging(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether a network file holds layers only this module applies (LyCORIS kinds, DoRA), or kinds no one
    here applies (then `merge` refuses them by name)."""
    return any(key.endswith(MERGED) or key.endswith(tuple(UNSUPPORTED)) for key in tensors)


@dataclass
class Merged:
    """A network merged into a model: the weights it replaced, to put back on `restore`."""

    replaced: list[tuple[torch.nn.Parameter, torch.Tensor]] = field(default_factory=list)
    layers: int = 0

    def restore(self) -> None:
        with torch.no_grad():
            for parameter, original in reversed(self.replaced):
                parameter.copy_(original)
        self.replaced.clear()


def merge(pipe: Pipeline, tensors: dict[str, torch.Tensor], weight: float) -> Merged:
    """Merge the network `tensors` into `pipe` at `weight` (A1111's multiplier); returns what restores it.

    Raises `InputError` for a kind sdlab does not apply, a file none of whose layers is in this model, or a
    layer whose update does not fit the module's weight (the model is left as it was)."""
    for suffix, kind in UNSUPPORTED.items():
        found = next((key for key in tensors if key.endswith(suffix)), None)
        if found is not None:
            raise InputError(f"it is a LyCORIS {kind} network ({found}), which sdlab does not apply")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        layer, _, part = key.partition(".")
        groups.setdefault(layer, {})[part] = value
    modules = module_index(pipe)
    merged = Merged()
    try:
        for layer, parts in groups.items():
            module = modules.get(layer)
            if module is None:
                continue
            target = module.weight
            update = layer_update(parts, target.detach().float(), weight, layer)
            merged.replaced.append((target, target.detach().clone()))
            with torch.no_grad():
                target.copy_((target.float() + update).to(target.dtype))
            if "diff_b" in parts and module.bias is not None:
                merged.replaced.append((module.bias, module.bias.detach().clone()))
                with torch.no_grad():
                    module.bias.add_(weight * parts["diff_b"].to(module.bias))
            merged.layers += 1
    except BaseException:
        merged.restore()
        raise
    if not merged.layers:
        raise InputError(
            f"none of its {len(groups)} layers (e.g. {next(iter(groups))}) is in this {pipe.family} model"
        )
    return merged


def layer_update(parts: dict[str, torch.Tensor], w: torch.Tensor, weight: float, layer: str) -> torch.Tensor:
    """The change to a module's weight `w` (float32) that one layer of the file makes at `weight`."""
    dw, dim = _update(parts, w.shape, layer)
    alpha = parts.get("alpha")
    scale = float(alpha) / dim if alpha is not None and dim else 1.0
    dw = dw.to(w.device, torch.float32) * scale
    if dw.numel() != w.numel():
        raise InputError(
            f"its layer {layer} makes an update of shape {tuple(dw.shape)} for a weight of {tuple(w.shape)}"
        )
    dw = dw.reshape(w.shape)
    if "dora_scale" in parts:
        dw = _decompose(dw, w, parts["dora_scale"].to(w.device, torch.float32))
    return weight * dw


def _update(parts: dict[str, torch.Tensor], shape: torch.Size, layer: str) -> tuple[torch.Tensor, int | None]:
    """(dW before scaling, the rank that alpha divides) for one layer's tensors."""
    p = {k: v.float() for k, v in parts.items() if k not in ("alpha", "dora_scale")}
    if "diff" in p:
        return p["diff"], None
    if "lora_up.weight" in p:
        up, down = p["lora_up.weight"], p["lora_down.weight"]
        if "lora_mid.weight" in p:  # CP decomposition: a k x k core between the two 1x1 projections
            return _tucker_cp(p["lora_mid.weight"], up, down), down.shape[0]
        if len(shape) == 4 and down.dim() == 4:  # a conv: down carries the kernel
            return (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:]), down.shape[0]
        return up.flatten(1) @ down.flatten(1), down.shape[0]
    if "hada_w1_a" in p:
        w1 = _factor(p, "hada_w1_a", "hada_w1_b", "hada_t1")
        w2 = _factor(p, "hada_w2_a", "hada_w2_b", "hada_t2")
        return w1 * w2, p["hada_w1_b"].shape[0]
    if "lokr_w1" in p or "lokr_w1_a" in p:
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        w2 = p["lokr_w2"] if "lokr_w2" in p else _factor(p, "lokr_w2_a", "lokr_w2_b", "lokr_t2")
        dim = (
            p["lokr_w1_b"].shape[0]
            if "lokr_w1_b" in p
            else p["lokr_w2_b"].shape[0]
            if "lokr_w2_b" in p
            else None
        )
        if w2.dim() == 4:  # a conv's kernel lives in w2
            w1 = w1[:, :, None, None]
        return torch.kron(w1, w2.contiguous()), dim
    raise InputError(f"its layer {layer} has parts {sorted(parts)} of no network kind sdlab knows")


def _factor(p: dict[str, torch.Tensor], a: str, b: str, core: str) -> torch.Tensor:
    """a @ b, or with a Tucker core t: einsum("i j k l, j r, i p -> p r k l", t, b, a) (LyCORIS' layout)."""
    if core in p:
        return torch.einsum("i j k l, j r, i p -> p r k l", p[core], p[b], p[a])
    return p[a].flatten(1) @ p[b].flatten(1)


def _tucker_cp(mid: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    return torch.einsum("n m k l, i n, m j -> i j k l", mid, up.flatten(1), down.flatten(1))


def _decompose(dw: torch.Tensor, w: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """DoRA (Liu et al. 2024): the updated weight rescaled to the stored magnitudes, per input column for a
    (1, in) `dora_scale` (A1111's `apply_weight_decompose`), per output row for an (out, 1) one (LyCORIS'
    `wd_on_output`, told apart by shape as ComfyUI does); returns the change from `w`."""
    merged = w + dw
    per_row = magnitude.shape[0] == w.shape[0] and magnitude.numel() == w.shape[0] and magnitude.shape[0] != 1
    if per_row:  # LyCORIS' `wd_on_output`: a magnitude per output row, (out, 1[, 1, 1])
        norm = merged.reshape(w.shape[0], -1).norm(dim=1).reshape(w.shape[0], *[1] * (w.dim() - 1))
    elif magnitude.numel() == w.shape[1]:  # a magnitude per input column, (1, in[, 1, 1]): A1111's reading
        norm = merged.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)
        norm = norm.reshape(1, w.shape[1], *[1] * (w.dim() - 2))
    else:
        raise InputError(
            f"its dora_scale of shape {tuple(magnitude.shape)} fits no axis of a weight of {tuple(w.shape)}"
        )
    return merged * (magnitude.reshape(norm.shape) / norm) - w


def module_index(pipe: Pipeline) -> dict[str, torch.nn.Module]:
    """kohya's layer names -> the model's modules that hold a weight (Linear, Conv2d; peft's wrappers seen
    through to their base layers): the UNet by its diffusers names and by its original ones, and each text
    encoder by its transformers names."""
    from sdlab.loading.export import unet_to_original

    index: dict[str, torch.nn.Module] = {}
    unet = _weighted(pipe.unet)

    def placed(name: str) -> bool:  # a module with a place in the original layout (not LCM's extras)
        try:
            unet_to_original({f"{name}.weight": None}, pipe.unet.config)
        except InputError:
            return False
        return True

    names = [name for name in unet if placed(name)]
    originals = unet_to_original({f"{name}.weight": name for name in names}, pipe.unet.config)
    for key, name in originals.items():
        index["lora_unet_" + key.removesuffix(".weight").replace(".", "_")] = unet[name]
    for name, module in unet.items():
        index["lora_unet_" + name.replace(".", "_")] = module
    encoders = pipe.text_encoders
    prefixes = ["lora_te1_", "lora_te2_"] if pipe.is_sdxl and len(encoders) == 2 else ["lora_te_"]
    if pipe.is_sdxl and len(encoders) == 1:
        prefixes = ["lora_te2_"]  # the refiner: bigG alone
    for prefix, (_, encoder) in zip(prefixes, encoders, strict=True):
        for name, module in _weighted(encoder).items():
            full = name if name.startswith("text_model.") else f"text_model.{name}"
            index[prefix + full.replace(".", "_")] = module
    return index


def _weighted(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    found = {}
    for name, module in model.named_modules():
        if "lora_" in name or not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            continue
        found[name.replace(".base_layer", "")] = module
    return found
