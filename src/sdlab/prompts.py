"""Prompt handling: A1111 attention syntax, prompts longer than 77 tokens, and text embeddings.

Syntax (as users of AUTOMATIC1111's web UI know it):
    (word)       weight x 1.1        ((word)) x 1.21
    [word]       weight / 1.1
    (word:1.3)   weight x 1.3        \\( \\) \\[ \\]  literal brackets
    BREAK        start a new 75-token chunk (the upper-case word; brackets around it change nothing)
    (word:-0.5)  any number is a weight, negative ones included
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
# AUTOMATIC1111's `re_attention` (modules/prompt_parser.py), with a stricter number: "(a:1.2.3)" is text
_ATTENTION = re.compile(
    r"""
    \\[()\[\]\\]      # escaped bracket or backslash: literal
    | \\                  # a lone backslash: dropped, as A1111 does
    | \( | \[
    | :\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)   # ":1.3)" closes a round bracket with an explicit weight
    | \) | \]
    | [^\\()\[\]:]+
    | :
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")  # A1111's re_break: the upper-case word, anywhere, brackets or not
BREAK = None  # the weight that marks a chunk boundary in `parse_prompt_weights`' output


def parse_prompt_weights(text: str) -> list[tuple[str, float | None]]:
    """Split a prompt into (text, weight) runs, as A1111's `parse_prompt_attention`.

    ("BREAK", None) marks a forced chunk boundary: only the literal word BREAK makes one, wherever it
    stands; any number, negative ones included, is an ordinary weight. (One difference: A1111 marks
    BREAK with the weight -1, which brackets around it rescale, so "(a BREAK b)" does not break there;
    here it does.) Unclosed brackets apply to the
    rest of the prompt; stray closing brackets are kept as text; adjacent runs of equal weight merge.
    """
    runs: list[list] = []  # [text, weight] pairs, mutable so a closing bracket can rescale a range
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            if run[1] is not BREAK:
                run[1] *= factor

    for m in _ATTENTION.finditer(text):
        token, explicit = m.group(0), m.group(1)
        if token.startswith("\\"):
            runs.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(runs))
        elif token == "[":
            square_open.append(len(runs))
        elif explicit is not None and round_open:
            scale(round_open.pop(), float(explicit))
        elif token == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i:
                    runs.append(["BREAK", BREAK])
                runs.append([part, 1.0])
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)

    merged: list[tuple[str, float | None]] = []
    for token, weight in runs:
        if not token and weight is not BREAK:
            continue
        if merged and weight is not BREAK and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + token, weight)
        else:
            merged.append((token, weight))
    return merged or [("", 1.0)]


@dataclass
class TokenChunks:
    """A prompt as windows of `model_max_length` token ids, with a weight per token."""

    ids: torch.Tensor  # (num_chunks, 77) long
    weights: torch.Tensor  # (num_chunks, 77) float

    @property
    def weighted(self) -> bool:
        return bool((self.weights != 1).any())


COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack: a chunk ends after a comma this close to its end


def tokenize_prompt(tokenizer: CLIPTokenizer, prompt: str, num_chunks: int | None = None) -> TokenChunks:
    """Tokenize `prompt` into 75-token chunks (each wrapped in bos/eos, padded), padded to `num_chunks`.

    As A1111's `tokenize_line`: BREAK ends a chunk; when a chunk is full and the next token is not a
    comma, a comma at most 20 tokens back ends it instead and the words after it move to the next
    chunk, so a phrase is not cut in two; a multi-vector textual-inversion token `<t>` becomes its
    vectors `<t> <t>_1 ...` wherever the tokenizer finds it (next to punctuation, inside brackets),
    each with the weight around it, all in one chunk.
    """
    window = tokenizer.model_max_length - 2
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    more_vectors = _multi_vector_ids(tokenizer)
    chunks: list[list[tuple[int, float]]] = [[]]
    last_comma = -1
    for text, weight in parse_prompt_weights(prompt):
        if weight is BREAK:
            chunks.append([])
            last_comma = -1
            continue
        for token in tokenizer(text, add_special_tokens=False, verbose=False).input_ids:
            vectors = (token, *more_vectors.get(token, ()))  # an embedding's vectors stay in one chunk
            chunk = chunks[-1]
            if token == comma:
                last_comma = len(chunk)
            elif len(chunk) == window and last_comma >= 0 and len(chunk) - last_comma <= COMMA_BACKTRACK:
                chunks[-1], moved = chunk[: last_comma + 1], chunk[last_comma + 1 :]
                chunks.append(moved)
                last_comma = -1
            if len(chunks[-1]) == window or len(chunks[-1]) + len(vectors) > window:
                chunks.append([])
                last_comma = -1
            chunks[-1].extend((v, weight) for v in vectors)
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


def _multi_vector_ids(tokenizer: CLIPTokenizer) -> dict[int, list[int]]:
    """{id of "<t>": ids of "<t>_1", "<t>_2", ...} for every multi-vector token the tokenizer was given
    (diffusers' naming, as `maybe_convert_prompt` expands it)."""
    added = tokenizer.get_added_vocab()
    expansions = {}
    for name, token_id in added.items():
        rest, i = [], 1
        while f"{name}_{i}" in added:
            rest.append(added[f"{name}_{i}"])
            i += 1
        if rest:
            expansions[token_id] = rest
    return expansions


@dataclass
class TextEmbeddings:
    """One text encoder's output for a batch of prompts.

    `hidden` (B, 77 * chunks, D): the chosen layer's hidden states, chunks concatenated on the sequence axis.
    `pooled` (B, P): the projected pooled embedding of each prompt's first chunk, for encoders with a
    projection (SDXL's OpenCLIP bigG, whose pooled embedding conditions the UNet); else None.
    """

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None


def hidden_layer(family: str, clip_skip: int) -> tuple[int | None, bool]:
    """(index into the encoder's hidden states, or None for its last layer; whether the final layer norm
    is applied) for a model family and `clip_skip`, the number of layers skipped from the family's own
    layer, in diffusers' meaning (A1111's "Clip skip: N" is clip_skip N - 1).

    SD 1.x/2.x read the last layer, after the final layer norm; clip_skip k reads hidden_states[-(k + 1)]
    through that norm (diffusers' `StableDiffusionPipeline.encode_prompt`, A1111's `CLIP_stop_at_last_layers`).
    SDXL reads the penultimate layer without the norm; clip_skip k reads hidden_states[-(k + 2)] of both
    encoders (diffusers' `StableDiffusionXLPipeline.encode_prompt`)."""
    if family.startswith("sdxl"):
        return -(clip_skip + 2), False
    return (None, True) if clip_skip == 0 else (-(clip_skip + 1), True)


@torch.no_grad()
def encode_prompts(
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    prompts: list[str],
    num_chunks: int | None = None,
    *,
    layer: int | None = None,
    final_norm: bool = True,
) -> TextEmbeddings:
    """Text embeddings for `prompts`, all padded to the same chunk count (see `TextEmbeddings`).

    `layer` None reads the last layer (with its final layer norm); a negative index reads that hidden
    state, through the final layer norm if `final_norm` (see `hidden_layer`). Weighted tokens scale
    their embedding vectors, then the whole embedding is rescaled to keep its original mean, as A1111
    does per text encoder, so that emphasis doesn't change the overall magnitude. The pooled embedding
    is not weighted (A1111: it comes from the first chunk as encoded).
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
    out = text_encoder(ids, attention_mask=mask, output_hidden_states=layer is not None)
    if layer is None:
        hidden = out.last_hidden_state  # (batch * chunks, 77, dim)
    else:
        hidden = out.hidden_states[layer]
        if final_norm:
            hidden = _text_model(text_encoder).final_layer_norm(hidden)
    hidden = hidden.reshape(len(prompts), num_chunks * ids.shape[1], -1)
    pooled = getattr(out, "text_embeds", None)  # CLIPTextModelWithProjection: (batch * chunks, P)
    if pooled is not None:
        pooled = pooled.view(len(prompts), num_chunks, -1)[:, 0]

    for i, t in enumerate(tokens):
        if t.weighted:
            w = t.weights.reshape(-1, 1).to(device=device, dtype=hidden.dtype)
            original_mean = hidden[i].mean()
            hidden[i] = hidden[i] * w
            ratio = original_mean / hidden[i].mean()
            if 0.5 < ratio < 2:  # a mean near zero (untrained encoders) would make the ratio explode
                hidden[i] = hidden[i] * ratio
    return TextEmbeddings(hidden, pooled)


def _text_model(text_encoder: torch.nn.Module) -> torch.nn.Module:
    """The module holding `final_layer_norm` (transformers >= 5.6 flattened `CLIPTextModel`)."""
    return getattr(text_encoder, "text_model", text_encoder)


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
