"""The CLIP tokenizer that ships with sdlab, so no model ever needs a hub to tokenize."""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPTokenizer

CLIP_TOKENIZER_DIR = Path(__file__).parent / "clip_tokenizer"
OPEN_CLIP_PAD_TOKEN = (
    "!"  # SD 2.x and SDXL's bigG were trained with OpenCLIP's tokenizer, which pads with "!" (id 0)
)


def clip_tokenizer(pad_token: str = "<|endoftext|>", model_max_length: int = 77) -> CLIPTokenizer:
    """OpenAI CLIP's BPE tokenizer (49,408 ids) from the files shipped in sdlab.

    SD 1.x pads with `<|endoftext|>`; SD 2.x (OpenCLIP) pads with `!` (id 0).
    """
    return CLIPTokenizer.from_pretrained(
        CLIP_TOKENIZER_DIR, pad_token=pad_token, model_max_length=model_max_length, local_files_only=True
    )
