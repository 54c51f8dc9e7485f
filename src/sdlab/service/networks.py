"""Extra networks (LoRAs, textual-inversion embeddings) applied to a model for one request only.

AUTOMATIC1111 applies a prompt's `<lora:...>` for that generation and takes it off afterwards; a
server that left it on would draw every later request with it. `extra_networks` loads them on entry
and restores the model exactly on exit (the adapter layers removed, the tokenizer and the embedding
table back to their own size), also when the generation in between raised.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sdlab.embeddings import load_embedding
from sdlab.lora import load_lora, unload_lora
from sdlab.pipeline import Pipeline


@contextmanager
def extra_networks(
    pipe: Pipeline,
    loras: Sequence[tuple[Path, float]] = (),
    embeddings: Sequence[tuple[Path, str | None]] = (),
    *,
    allow_pickle: bool = False,
) -> Iterator[Pipeline]:
    """`pipe` with `loras` (file, weight) and `embeddings` (file, token or None for the file's own) applied.

    Raises `InputError` for a file that is not a LoRA or an embedding for this model; the model is
    restored before the error leaves the block.
    """
    encoders = [(t, e) for t, e in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
                if getattr(pipe, e) is not None]  # fmt: skip
    tokenizers = {t: getattr(pipe, t) for t, _ in encoders}
    vocab_sizes = {e: getattr(pipe, e).get_input_embeddings().weight.shape[0] for _, e in encoders}
    adapters: list[str] = []
    try:
        if embeddings:  # added tokens cannot be taken out of a tokenizer
            for name, tokenizer in tokenizers.items():
                setattr(pipe, name, copy.deepcopy(tokenizer))
        for path, token in embeddings:
            load_embedding(pipe, path, token=token, allow_pickle=allow_pickle)
        for path, weight in loras:
            adapters.append(load_lora(pipe, path, weight, allow_pickle=allow_pickle))
        yield pipe
    finally:
        try:
            for name in reversed(adapters):
                unload_lora(pipe, name)
        finally:  # the embeddings are restored even if taking a LoRA off failed
            for name, encoder in encoders:
                setattr(pipe, name, tokenizers[name])
                text_encoder = getattr(pipe, encoder)
                if text_encoder.get_input_embeddings().weight.shape[0] != vocab_sizes[encoder]:
                    text_encoder.resize_token_embeddings(vocab_sizes[encoder])  # keeps rows 0 .. size - 1
