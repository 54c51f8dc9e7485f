"""`sdlab textual-inversion DATA --token "<name>"`: teach the text encoder one new word, nothing else.

Gal et al. 2022: add a token (K vectors) initialised from an existing word, and train only its
embedding rows on the objective of Stable Diffusion, with the UNet, the VAE and every other embedding
frozen. After each optimizer step the other rows are restored, so they stay bit-identical (AdamW's
weight decay would otherwise touch them). Prompts come from templates ("a photo of a <name>"), or, with
`--prompts caption`, from each image's own caption with the token appended (or in place, where the
caption already names it: "a <tiny> handwritten digit 3").

On SDXL the word is added to both text encoders, and both sets of rows train, as diffusers'
`textual_inversion_sdxl.py` does. The result is written in its layout (`learned_embeds.safetensors` and
`learned_embeds_2.safetensors`) and as one `NAME.safetensors` holding `clip_l` and `clip_g`, the file
A1111, ComfyUI and `sdlab generate --embedding` read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sdlab.datasets import read_folder
from sdlab.embeddings import SDXL_KEYS, add_tokens, save_embedding, token_names
from sdlab.errors import InputError
from sdlab.options import option
from sdlab.training.data import CaptionEncoder
from sdlab.training.loop import TrainLoop
from sdlab.training.recipe import (
    CaptionBatch,
    RecipeConfig,
    draw_captioned,
    latent_data,
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
    a1111: bool = option(
        False, "also write the embedding in A1111's format (NAME.safetensors; SDXL always writes it)"
    )
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
    encoders = [name for name in ("text_encoder", "text_encoder_2") if getattr(pipe, name) is not None]
    ids = {name: add_tokens(pipe, cfg.token, initial_vectors(pipe, cfg.initializer_token, cfg.num_vectors, name),
                            encoder=name) for name in encoders}  # fmt: skip
    words = " ".join(token_names(cfg.token, cfg.num_vectors))
    if cfg.prompts == "caption":
        captions = [caption_with_token(item.caption, cfg.token, words) for item in items]
    else:
        captions = [words] * len(items)  # filled into a random template at each step
    templates = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}.get(cfg.prompts)
    data = latent_data(pipe, items, captions, cache=cfg.cache_latents, size=cfg.resolution)

    tables = {name: getattr(pipe, name).get_input_embeddings().weight for name in encoders}
    frozen, original = {}, {}
    for name, weight in tables.items():
        weight.requires_grad_(True)
        frozen[name] = torch.ones(len(weight), dtype=torch.bool, device=weight.device)
        frozen[name][ids[name]] = False
        original[name] = weight.detach().clone()
        getattr(pipe, name).train()
    prepared = loop.prepare(
        *(getattr(pipe, n) for n in encoders), params=list(tables.values()), weight_decay=0.0
    )
    noise_scheduler = training_noise_scheduler(pipe)
    timesteps = noise_scheduler.config.num_train_timesteps
    encode = CaptionEncoder(pipe, prepared, cfg.resolution)  # after the new tokens were added

    def template(words: str) -> str:
        return loop.rng.py.choice(templates).format(words)

    def draw(step: int) -> CaptionBatch:
        return draw_captioned(loop, data, timesteps, template=template if templates is not None else None)

    def loss(batch: CaptionBatch, rows: slice) -> torch.Tensor:
        return rows_loss(batch, rows, pipe.unet, noise_scheduler, encode, cfg.snr_gamma)

    @torch.no_grad()
    def restore_other_rows() -> None:
        for name, weight in tables.items():
            weight[frozen[name]] = original[name][frozen[name]].to(weight.dtype)

    def validate(step: int) -> None:
        save_validation(pipe, cfg.validation_prompts, loop.out, step, cfg.validation_steps)

    loop.run(draw, loss, after_step=restore_other_rows, validate=validate, desc="textual inversion")
    learned = {name: tables[name][ids[name]].detach() for name in encoders}
    return save_learned(loop, cfg, learned) if loop.accelerator.is_main_process else loop.out


def save_learned(loop: TrainLoop, cfg: TextualInversionConfig, learned: dict[str, torch.Tensor]) -> Path:
    """Write the learned vectors {encoder name: (K, D)}; returns the file `sdlab generate --embedding` reads.

    SD: `learned_embeds.safetensors` (diffusers' layout), and with `--a1111` NAME.safetensors.
    SDXL: diffusers' `learned_embeds.safetensors` and `learned_embeds_2.safetensors`, and always NAME.safetensors
    with `clip_l` and `clip_g` (A1111's and ComfyUI's SDXL layout)."""
    a1111 = loop.out / f"{cfg.token.strip('<>')}.safetensors"
    save_embedding(loop.out / "learned_embeds.safetensors", cfg.token, learned["text_encoder"])
    if "text_encoder_2" not in learned:
        if cfg.a1111:
            save_embedding(a1111, cfg.token, learned["text_encoder"], a1111=True)
        return loop.out / "learned_embeds.safetensors"
    save_embedding(loop.out / "learned_embeds_2.safetensors", cfg.token, learned["text_encoder_2"])
    by_key = {key: learned[encoder] for key, encoder in SDXL_KEYS.items()}
    return save_embedding(a1111, cfg.token, by_key)


def initial_vectors(pipe, initializer: str, k: int, encoder: str = "text_encoder") -> torch.Tensor:
    """K copies of the initializer word's embedding in `encoder` (it must be a single token), or small noise
    without one; (K, D) float32."""
    weight = getattr(pipe, encoder).get_input_embeddings().weight.detach()
    if not initializer:
        return torch.randn(k, weight.shape[1], generator=torch.Generator().manual_seed(0)) * weight.std()
    tokenizer = getattr(pipe, "tokenizer" + encoder.removeprefix("text_encoder"))
    ids = tokenizer(initializer, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise InputError(
            f"--initializer-token {initializer!r} is {len(ids)} tokens; choose a single-token word"
        )
    return weight[ids[0]].float().cpu().repeat(k, 1)
