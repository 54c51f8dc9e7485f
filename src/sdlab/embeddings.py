"""Textual-inversion embeddings: new words for the text encoder, in the files people share.

- diffusers format (`learned_embeds.safetensors`, written by diffusers' example and by sdlab):
  {"<token>": tensor (K, D) or (D,)};
- AUTOMATIC1111 format: `name.safetensors` holding {"emb_params": tensor (K, D)}, or a `.pt` pickle
  with {"string_to_param": {"*": tensor}} (only with allow_pickle, and then weights_only).

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


def add_tokens(pipe: Pipeline, token: str, vectors: torch.Tensor) -> list[int]:
    """Add `token` (K vectors) to the tokenizer and the text encoder's embedding table; returns the new ids."""
    vectors = vectors.reshape(-1, vectors.shape[-1])
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    if vectors.shape[1] != width:
        raise InputError(
            f"the embedding for {token} has vectors of width {vectors.shape[1]}, but this model's text encoder "
            f"has width {width} (an embedding trained for another model family?)"
        )
    names = token_names(token, len(vectors))
    if any(name in pipe.tokenizer.get_added_vocab() for name in names):
        raise InputError(f"the tokenizer already has a token {token!r}; choose another name")
    # whole words only: an embedding named "sq" must not cut "square" into "sq" + "uare"
    pipe.tokenizer.add_tokens([AddedToken(name, single_word=True) for name in names])
    ids = pipe.tokenizer.convert_tokens_to_ids(names)
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
    with torch.no_grad():
        weight = pipe.text_encoder.get_input_embeddings().weight
        weight[ids] = vectors.to(weight.device, weight.dtype)
    return ids


def read_embedding(path: str | Path, *, allow_pickle: bool = False) -> tuple[str, torch.Tensor]:
    """(token, vectors (K, D)) from a diffusers or A1111 embedding file; an A1111 token is the file's stem,
    as A1111 names it."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors = read_state_dict(path)
    elif not path.is_file():
        raise InputError(f"embedding file {path} does not exist")
    else:  # A1111 .pt embeddings nest their tensor in dicts, which read_state_dict would drop
        tensors = read_pickle(path, allow_pickle=allow_pickle)
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
    """Teach `pipe` the word stored in `path` (optionally under another name); returns the token to write."""
    name, vectors = read_embedding(path, allow_pickle=allow_pickle)
    add_tokens(pipe, token or name, vectors.float())
    return token or name


def save_embedding(path: str | Path, token: str, vectors: torch.Tensor, *, a1111: bool = False) -> Path:
    """diffusers' `learned_embeds.safetensors` layout, or A1111's {"emb_params": ...} with `a1111`."""
    tensors = {"emb_params": vectors} if a1111 else {token: vectors}
    with atomic_path(path) as tmp:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    return Path(path)
