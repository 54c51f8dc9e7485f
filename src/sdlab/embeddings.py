"""Textual-inversion embeddings: new words for the text encoder, in the files people share.

- diffusers format (`learned_embeds.safetensors`, written by diffusers' example and by sdlab):
  {"<token>": tensor (K, D) or (D,)};
- AUTOMATIC1111 format: `name.safetensors` holding {"emb_params": tensor (K, D)}, or a `.pt` pickle
  with {"string_to_param": {"*": tensor}} (only with allow_pickle, and then weights_only);
- SDXL (A1111, ComfyUI, diffusers' `textual_inversion_sdxl.py`): {"clip_l": (K, 768), "clip_g": (K, 1280)},
  one set of vectors per text encoder, both under one token (the refiner takes `clip_g` alone).

A K-vector token "<t>" becomes K tokens "<t>", "<t>_1", ... "<t>_{K-1}"; wherever the tokenizer finds
"<t>" in a prompt, `sdlab.prompts.tokenize_prompt` puts all K in its place, as diffusers'
`maybe_convert_prompt` does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken

from sdlab.atomic import atomic_path
from sdlab.errors import InputError
from sdlab.loading.checkpoint import read_pickle, read_state_dict
from sdlab.pipeline import Pipeline


def token_names(token: str, k: int) -> list[str]:
    return [token] + [f"{token}_{i}" for i in range(1, k)]


SDXL_KEYS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}  # an SDXL embedding's vectors, by encoder


def add_tokens(
    pipe: Pipeline, token: str, vectors: torch.Tensor, *, encoder: str = "text_encoder"
) -> list[int]:
    """Add `token` (K vectors, (K, D)) to the tokenizer and embedding table of `encoder` ("text_encoder",
    or SDXL's "text_encoder_2"); returns the new ids. `InputError` for a width that does not fit."""
    tokenizer = "tokenizer" + encoder.removeprefix("text_encoder")
    text_encoder, tokenizer = getattr(pipe, encoder), getattr(pipe, tokenizer)
    vectors = vectors.reshape(-1, vectors.shape[-1])
    width = text_encoder.get_input_embeddings().weight.shape[1]
    if vectors.shape[1] != width:
        raise InputError(
            f"the embedding for {token} has vectors of width {vectors.shape[1]}, but this model's text encoder "
            f"has width {width} (an embedding trained for another model family?)"
        )
    names = token_names(token, len(vectors))
    if any(name in tokenizer.get_added_vocab() for name in names):
        raise InputError(f"the tokenizer already has a token {token!r}; choose another name")
    # whole words only: an embedding named "sq" must not cut "square" into "sq" + "uare"
    tokenizer.add_tokens([AddedToken(name, single_word=True) for name in names])
    ids = tokenizer.convert_tokens_to_ids(names)
    text_encoder.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        weight = text_encoder.get_input_embeddings().weight
        weight[ids] = vectors.to(weight.device, weight.dtype)
    return ids


def read_embedding(
    path: str | Path, *, allow_pickle: bool = False
) -> tuple[str, torch.Tensor | dict[str, torch.Tensor]]:
    """(token, vectors (K, D)) from a diffusers or A1111 embedding file, or (token, {"clip_l": (K, 768),
    "clip_g": (K, 1280)}) from an SDXL one; an A1111 or SDXL token is the file's stem, as A1111 names it."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors = read_state_dict(path)
    elif not path.is_file():
        raise InputError(f"embedding file {path} does not exist")
    else:  # A1111 .pt embeddings nest their tensor in dicts, which read_state_dict would drop
        tensors = read_pickle(path, allow_pickle=allow_pickle)
    if set(SDXL_KEYS) & set(tensors):  # SDXL: a set of vectors per text encoder
        return path.stem, {k: v for k, v in tensors.items() if k in SDXL_KEYS}
    if "emb_params" in tensors:  # A1111 safetensors
        return path.stem, tensors["emb_params"]
    if "string_to_param" in tensors:  # A1111 .pt
        return path.stem, next(iter(tensors["string_to_param"].values()))
    if len(tensors) == 1:
        ((token, vectors),) = tensors.items()
        if isinstance(vectors, torch.Tensor):
            return token, vectors
    raise InputError(f"{path} is neither a diffusers nor an A1111 textual-inversion embedding")


def load_embedding(
    pipe: Pipeline, path: str | Path, *, token: str | None = None, allow_pickle: bool = False
) -> str:
    """Teach `pipe` the word stored in `path` (optionally under another name); returns the token to write.

    An SDXL embedding teaches each text encoder its own vectors. `InputError` for an embedding of another
    family (SD 1.x/2.x vectors on SDXL, or the other way round) or of the wrong width."""
    name, vectors = read_embedding(path, allow_pickle=allow_pickle)
    token = token or name
    if isinstance(vectors, dict) != pipe.is_sdxl:
        kind = "an SDXL embedding (clip_l and clip_g vectors)" if isinstance(vectors, dict) else (
            "an SD 1.x/2.x embedding (one set of vectors)"
        )  # fmt: skip
        raise InputError(f"{path} is {kind}, and this model is {pipe.family}")
    if isinstance(vectors, dict):
        for key, encoder in SDXL_KEYS.items():
            if getattr(pipe, encoder) is None:
                continue  # the refiner has bigG alone
            if key not in vectors:
                raise InputError(f"{path} lacks the {key} vectors this SDXL model's {encoder} needs")
            add_tokens(pipe, token, vectors[key].float(), encoder=encoder)
    else:
        add_tokens(pipe, token, vectors.float())
    return token


def embedding_fits(pipe: Pipeline, path: str | Path, *, allow_pickle: bool = False) -> bool:
    """Whether the embedding in `path` is one `pipe` can take (A1111's `expected_shape` check: the family, and
    the vectors' width of each text encoder); False also for a file that is not an embedding."""
    try:
        _, vectors = read_embedding(path, allow_pickle=allow_pickle)
    except InputError:
        return False
    if isinstance(vectors, dict) != pipe.is_sdxl:
        return False
    pairs = vectors.items() if isinstance(vectors, dict) else [("", vectors)]
    encoders = dict(SDXL_KEYS) if isinstance(vectors, dict) else {"": "text_encoder"}
    for key, v in pairs:
        encoder = getattr(pipe, encoders.get(key, ""), None)
        if encoder is not None and (
            v.ndim not in (1, 2) or v.shape[-1] != encoder.get_input_embeddings().weight.shape[1]
        ):
            return False
    return True


def save_embedding(
    path: str | Path, token: str, vectors: torch.Tensor | dict[str, torch.Tensor], *, a1111: bool = False
) -> Path:
    """diffusers' `learned_embeds.safetensors` layout {token: (K, D)}, or A1111's {"emb_params": (K, D)} with
    `a1111`; `vectors` {"clip_l": ..., "clip_g": ...} is written as it is (SDXL's layout), float32."""
    tensors = {"emb_params": vectors} if a1111 else {token: vectors}
    tensors = vectors if isinstance(vectors, dict) else tensors
    with atomic_path(path) as tmp:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    return Path(path)
