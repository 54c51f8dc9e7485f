"""`sdlab textual-inversion DATA --token "<name>"`: teach the text encoder one new word, nothing else.

Gal et al. 2022: add a token (K vectors) initialised from an existing word, and train only its
embedding rows on the objective of Stable Diffusion, with the UNet, the VAE and every other embedding
frozen. After each optimizer step the other rows are restored, so they stay bit-identical (AdamW's
weight decay would otherwise touch them). Prompts come from templates ("a photo of a <name>"), or, with
`--prompts caption`, from each image's own caption with the token appended (or in place, where the
caption already names it: "a <tiny> handwritten digit 3").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sdlab.datasets import load_pixels, read_folder
from sdlab.embeddings import add_tokens, save_embedding, token_names
from sdlab.errors import InputError
from sdlab.options import option
from sdlab.training.data import CaptionTokens, LatentData
from sdlab.training.loop import TrainLoop
from sdlab.training.recipe import (
    CaptionBatch,
    RecipeConfig,
    draw_captioned,
    load_base,
    rows_loss,
    save_validation,
    training_noise_scheduler,
)

# diffusers' examples/textual_inversion/textual_inversion.py (from the paper's code)
OBJECT_TEMPLATES = [
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
]  # fmt: skip
STYLE_TEMPLATES = [
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}", "a dirty painting in the style of {}",
    "a dark painting in the style of {}", "a picture in the style of {}", "a cool painting in the style of {}",
    "a close-up painting in the style of {}", "a bright painting in the style of {}",
    "a cropped painting in the style of {}", "a good painting in the style of {}",
    "a close-up painting in the style of {}", "a rendition in the style of {}", "a nice painting in the style of {}",
    "a small painting in the style of {}", "a weird painting in the style of {}", "a large painting in the style of {}",
]  # fmt: skip
PROMPT_SOURCES = ("object", "style", "caption")


@dataclass
class TextualInversionConfig(RecipeConfig):
    token: str = option("<concept>", "the new word, e.g. <tiny>", "--placeholder-token")
    initializer_token: str = option("", "an existing single-token word to start from (default: small noise)")
    num_vectors: int = option(1, "vectors (tokens) the new word is made of")
    prompts: str = option(
        "object",
        "object or style templates, or caption: each image's caption, the token appended unless it names it",
        choices=list(PROMPT_SOURCES),
    )
    a1111: bool = option(False, "also write the embedding in A1111's format (TOKEN.safetensors)")
    learning_rate: float = option(5e-3, "learning rate (one embedding row: far higher than a UNet's)", "--lr")


def caption_with_token(caption: str, token: str, words: str) -> str:
    """The caption with the token's words (all K vectors) where it names the token, else appended."""
    pattern = rf"(?<!\S){re.escape(token)}(?!\S)"
    if re.search(pattern, caption):
        return re.sub(pattern, lambda _: words, caption)
    return f"{caption} {words}"


def textual_inversion(cfg: TextualInversionConfig) -> Path:
    """Train the token's vectors; write OUTPUT/learned_embeds.safetensors (diffusers' format)."""
    if cfg.prompts not in PROMPT_SOURCES:
        raise InputError(f"--prompts must be one of {', '.join(PROMPT_SOURCES)}, got {cfg.prompts!r}")
    if cfg.num_vectors < 1:
        raise InputError(f"--num-vectors must be at least 1, got {cfg.num_vectors}")
    loop = TrainLoop(cfg)
    pipe = load_base(cfg, loop.accelerator.device)
    items = read_folder(cfg.data, require_captions=cfg.prompts == "caption")
    init = initial_vectors(pipe, cfg.initializer_token, cfg.num_vectors)
    ids = add_tokens(pipe, cfg.token, init)
    words = " ".join(token_names(cfg.token, cfg.num_vectors))
    if cfg.prompts == "caption":
        captions = [caption_with_token(item.caption, cfg.token, words) for item in items]
    else:
        captions = [words] * len(items)  # filled into a random template at each step
    templates = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}.get(cfg.prompts)
    data = LatentData(
        load_pixels(items, cfg.resolution or pipe.default_size), captions, pipe.vae, cache=cfg.cache_latents
    )

    embeddings = pipe.text_encoder.get_input_embeddings()
    embeddings.weight.requires_grad_(True)
    frozen = torch.ones(len(embeddings.weight), dtype=torch.bool, device=embeddings.weight.device)
    frozen[ids] = False
    original = embeddings.weight.detach().clone()
    pipe.text_encoder.train()
    (text_encoder,) = loop.prepare(pipe.text_encoder, params=[embeddings.weight], weight_decay=0.0)
    noise_scheduler = training_noise_scheduler(pipe)

    timesteps = noise_scheduler.config.num_train_timesteps
    tokens = CaptionTokens(pipe.tokenizer)  # after the new tokens were added

    def template(words: str) -> str:
        return loop.rng.py.choice(templates).format(words)

    def draw(step: int) -> CaptionBatch:
        return draw_captioned(loop, data, timesteps, template=template if templates is not None else None)

    def loss(batch: CaptionBatch, rows: slice) -> torch.Tensor:
        return rows_loss(batch, rows, pipe.unet, noise_scheduler, tokens, text_encoder, cfg.snr_gamma)

    @torch.no_grad()
    def restore_other_rows() -> None:
        embeddings.weight[frozen] = original[frozen].to(embeddings.weight.dtype)

    def validate(step: int) -> None:
        save_validation(pipe, cfg.validation_prompts, loop.out, step, cfg.validation_steps)

    loop.run(draw, loss, after_step=restore_other_rows, validate=validate, desc="textual inversion")
    learned = embeddings.weight[ids].detach()
    out = loop.out / "learned_embeds.safetensors"
    if loop.accelerator.is_main_process:
        save_embedding(out, cfg.token, learned)
        if cfg.a1111:
            save_embedding(loop.out / f"{cfg.token.strip('<>')}.safetensors", cfg.token, learned, a1111=True)
    return out


def initial_vectors(pipe, initializer: str, k: int) -> torch.Tensor:
    """K copies of the initializer word's embedding (it must be a single token), or small noise without one."""
    weight = pipe.text_encoder.get_input_embeddings().weight.detach()
    if not initializer:
        return torch.randn(k, weight.shape[1], generator=torch.Generator().manual_seed(0)) * weight.std()
    ids = pipe.tokenizer(initializer, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise InputError(
            f"--initializer-token {initializer!r} is {len(ids)} tokens; choose a single-token word"
        )
    return weight[ids[0]].float().cpu().repeat(k, 1)
