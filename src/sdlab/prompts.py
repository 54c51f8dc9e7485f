"""Prompt handling: A1111 attention syntax, prompts longer than 77 tokens, and text embeddings.

Syntax (as users of AUTOMATIC1111's web UI know it):
    (word)       weight x 1.1        ((word)) x 1.21
    [word]       weight / 1.1
    (word:1.3)   weight x 1.3        \\( \\) \\[ \\]  literal brackets
    BREAK        start a new 75-token chunk
Long prompts are cut into chunks of 75 tokens, each encoded as its own `<bos> ... <eos> <pad>...` window
of 77 and concatenated along the sequence axis, so the UNet's cross-attention sees all of them.
A plain prompt (one chunk, all weights 1) gives exactly `text_encoder(tokenizer(prompt, padding="max_length"))`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import CLIPTextModel, CLIPTokenizer

ROUND, SQUARE = 1.1, 1 / 1.1
_TOKEN = re.compile(r"\\[()\[\]\\]|\(|\[|:\s*([+-]?\d*\.?\d+)\s*\)|\)|\]|BREAK|[^\\()\[\]:B]+|.", re.S)


def parse_prompt_weights(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) runs; ("BREAK", -1) marks a forced chunk boundary.

    Unclosed brackets apply to the rest of the prompt; stray closing brackets are kept as text.
    """
    runs: list[list] = []  # [text, weight] pairs, mutable so a closing bracket can rescale a range
    stack: list[tuple[str, int]] = []  # (bracket, index of the first run inside it)

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            if run[1] > 0:
                run[1] *= factor

    for m in _TOKEN.finditer(text):
        tok, explicit = m.group(0), m.group(1)
        if tok.startswith("\\") and len(tok) == 2:
            runs.append([tok[1], 1.0])
        elif tok in ("(", "["):
            stack.append((tok, len(runs)))
        elif explicit is not None and stack and stack[-1][0] == "(":
            scale(stack.pop()[1], float(explicit))
        elif tok == ")" and stack and stack[-1][0] == "(":
            scale(stack.pop()[1], ROUND)
        elif tok == "]" and stack and stack[-1][0] == "[":
            scale(stack.pop()[1], SQUARE)
        elif tok == "BREAK" and _is_word(text, m.start(), m.end()):
            runs.append(["BREAK", -1.0])
        else:
            runs.append([tok, 1.0])
    for bracket, start in reversed(stack):
        scale(start, ROUND if bracket == "(" else SQUARE)

    merged: list[tuple[str, float]] = []
    for tok, weight in runs:
        if merged and merged[-1][1] == weight and weight > 0:
            merged[-1] = (merged[-1][0] + tok, weight)
        else:
            merged.append((tok, weight))
    return merged or [("", 1.0)]


def _is_word(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    return not (before.isalnum() or after.isalnum())


@dataclass
class TokenChunks:
    """A prompt as windows of `model_max_length` token ids, with a weight per token."""

    ids: torch.Tensor  # (num_chunks, 77) long
    weights: torch.Tensor  # (num_chunks, 77) float

    @property
    def weighted(self) -> bool:
        return bool((self.weights != 1).any())


def tokenize_prompt(tokenizer: CLIPTokenizer, prompt: str, num_chunks: int | None = None) -> TokenChunks:
    """Tokenize `prompt` into 75-token chunks (each wrapped in bos/eos, padded), padded to `num_chunks`."""
    window = tokenizer.model_max_length - 2
    chunks: list[list[tuple[int, float]]] = [[]]
    for text, weight in parse_prompt_weights(prompt):
        if weight < 0:  # BREAK
            chunks.append([])
            continue
        for token in tokenizer(text, add_special_tokens=False, verbose=False).input_ids:
            if len(chunks[-1]) == window:
                chunks.append([])
            chunks[-1].append((token, weight))
    if len(chunks) > 1 and not chunks[-1]:
        chunks.pop()
    while num_chunks is not None and len(chunks) < num_chunks:
        chunks.append([])

    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = torch.full((len(chunks), window + 2), pad, dtype=torch.long)
    weights = torch.ones((len(chunks), window + 2))
    for row, chunk in enumerate(chunks):
        ids[row, 0] = bos
        for col, (token, weight) in enumerate(chunk, start=1):
            ids[row, col], weights[row, col] = token, weight
        ids[row, len(chunk) + 1] = eos
    return TokenChunks(ids, weights)


@torch.no_grad()
def encode_prompts(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: list[str], num_chunks: int | None = None
) -> torch.Tensor:
    """Text embeddings (batch, 77 * chunks, dim) for `prompts`, all padded to the same chunk count.

    Weighted tokens scale their embedding vectors, then the whole embedding is rescaled to keep its
    original mean, as A1111 does, so that emphasis doesn't change the overall magnitude.
    """
    tokens = [tokenize_prompt(tokenizer, p) for p in prompts]
    num_chunks = max([num_chunks or 1] + [t.ids.shape[0] for t in tokens])
    empty = tokenize_prompt(tokenizer, "")  # one <bos> <eos> <pad>... window
    tokens = [_pad_chunks(t, empty, num_chunks) for t in tokens]

    device = text_encoder.device
    ids = torch.cat([t.ids for t in tokens]).to(device)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = (ids != tokenizer.pad_token_id).long()
    hidden = text_encoder(ids, attention_mask=mask)[0]  # (batch * chunks, 77, dim)
    hidden = hidden.view(len(prompts), num_chunks * ids.shape[1], -1)

    for i, t in enumerate(tokens):
        if t.weighted:
            w = t.weights.reshape(-1, 1).to(device=device, dtype=hidden.dtype)
            original_mean = hidden[i].mean()
            hidden[i] = hidden[i] * w
            ratio = original_mean / hidden[i].mean()
            if 0.5 < ratio < 2:  # a mean near zero (untrained encoders) would make the ratio explode
                hidden[i] = hidden[i] * ratio
    return hidden


def _pad_chunks(tokens: TokenChunks, empty: TokenChunks, num_chunks: int) -> TokenChunks:
    """Append empty windows until `tokens` has `num_chunks` of them."""
    missing = num_chunks - tokens.ids.shape[0]
    if missing <= 0:
        return tokens
    return TokenChunks(
        torch.cat([tokens.ids, empty.ids.expand(missing, -1)]),
        torch.cat([tokens.weights, empty.weights.expand(missing, -1)]),
    )


def count_chunks(tokenizer: CLIPTokenizer, prompts: list[str]) -> int:
    return max(tokenize_prompt(tokenizer, p).ids.shape[0] for p in prompts)
