"""Where each prompt word lands: cross-attention maps averaged over heads, layers and steps (DAAM).

Tang et al. 2022, "What the DAAM: Interpreting Stable Diffusion Using Cross Attention": in every
cross-attention layer, each latent pixel attends over the prompt's tokens; the attention a word's
tokens receive, averaged over heads, upsampled from each layer's resolution to the image and summed
over layers and steps, is a heat map of where that word acts. The maps are collected by a diffusers
attention processor installed for one generation; the UNet itself is not copied or changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor

from sdlab.pipeline import Pipeline
from sdlab.prompts import tokenize_prompt
from sdlab.service import GeneratedImage, GenerationRequest, ModelRegistry, run_request
from sdlab.service.request import strip_extra_networks


class CrossAttentionStore:
    """Accumulates the conditional branch's cross-attention probabilities at latent resolution."""

    def __init__(self, latent_size: tuple[int, int], batch_size: int = 1) -> None:
        self.latent_size = latent_size
        self.batch_size = batch_size
        self.total: torch.Tensor | None = None  # (tokens, h, w), on the CPU
        self.count = 0

    def add(self, probs: torch.Tensor, heads: int) -> None:
        """`probs`: (batch * heads, h_l * w_l, tokens) from one layer at one step."""
        per_image = probs.reshape(-1, heads, *probs.shape[1:]).mean(dim=1)  # (batch, hw, tokens)
        conditional = per_image[-self.batch_size :][0].float().cpu()  # CFG puts [uncond, cond]: image 0, cond
        h, w = layer_size(self.latent_size, conditional.shape[0])
        grid = conditional.T.reshape(-1, 1, h, w)
        grid = torch.nn.functional.interpolate(grid, size=self.latent_size, mode="bilinear")[:, 0]
        self.total = grid if self.total is None else self.total + grid
        self.count += 1

    def heat(self, size: tuple[int, int]) -> torch.Tensor:
        """(tokens, H, W): the mean map over every recorded layer and step, upsampled to `size` (H, W)."""
        mean = (self.total / max(self.count, 1)).unsqueeze(1)
        return torch.nn.functional.interpolate(mean, size=size, mode="bilinear")[:, 0]


def layer_size(latent_size: tuple[int, int], pixels: int) -> tuple[int, int]:
    """The (h, w) of a UNet level holding `pixels` positions: the latent halved (rounding up) per level."""
    h, w = latent_size
    while h * w > pixels:
        h, w = -(-h // 2), -(-w // 2)
    if h * w != pixels:
        raise ValueError(f"no UNet level of a {latent_size} latent has {pixels} positions")
    return h, w


@contextmanager
def recording_attention(pipe: Pipeline, latent_size: tuple[int, int]) -> Iterator[CrossAttentionStore]:
    """`pipe`'s UNet with its cross-attention recorded into the yielded store, for one generation."""
    store = CrossAttentionStore(latent_size)
    original = pipe.unet.attn_processors
    pipe.unet.set_attn_processor(RecordingAttnProcessor(store))
    try:
        yield store
    finally:
        pipe.unet.set_attn_processor(original)


class RecordingAttnProcessor(AttnProcessor):
    """diffusers' `AttnProcessor`, with the cross-attention probabilities handed to a store."""

    def __init__(self, store: CrossAttentionStore) -> None:
        self.store = store

    def __call__(
        self,
        attn: Attention,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        **kwargs,
    ):
        if encoder_hidden_states is None:  # self-attention: nothing to record
            return super().__call__(attn, hidden_states, None, attention_mask, temb)
        compute = attn.get_attention_scores

        def recorded(query, key, mask=None):
            probs = compute(query, key, mask)
            self.store.add(probs.detach(), attn.heads)
            return probs

        attn.get_attention_scores = recorded  # this call only; the class's method is untouched
        try:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        finally:
            del attn.get_attention_scores


@dataclass
class WordMap:
    word: str
    heat: np.ndarray  # (H, W) in [0, 1], image resolution
    overlay: PIL.Image.Image  # the heat map over the image


@dataclass
class AttentionMaps:
    image: GeneratedImage
    words: list[WordMap]


@torch.no_grad()
def attention_maps(registry: ModelRegistry, request: GenerationRequest) -> AttentionMaps:
    """Generate image 0 of `request` and map where each word of its prompt lands (DAAM), averaged over
    every cross-attention layer and step: the UNet runs whole (no deep cache) unless the request says."""
    request = request.replace(
        num_images_per_prompt=1, batch_count=1, deep_cache=request.deep_cache or 1
    ).validate()
    pipe = registry.pipeline(registry.find_model(request.model))
    with recording_attention(pipe, latent_size(pipe, request)) as store:
        result = run_request(registry, request)
    return AttentionMaps(result.images[0], word_maps(pipe, request.prompt, store, result.images[0].image))


def latent_size(pipe: Pipeline, request: GenerationRequest) -> tuple[int, int]:
    """(h, w) of the latents `request` will have on `pipe` (an init image decides unless sizes are given)."""
    height, width = request.height, request.width
    if (height is None or width is None) and request.init_image is not None:
        from sdlab.images import load_image

        image = load_image(request.init_image, what="init image")
        width, height = width or image.width, height or image.height
    height, width = height or pipe.default_size, width or pipe.default_size
    return height // pipe.vae_scale_factor, width // pipe.vae_scale_factor


def word_maps(
    pipe: Pipeline, prompt: str, store: CrossAttentionStore, image: PIL.Image.Image
) -> list[WordMap]:
    """One normalised heat map (and overlay on `image`) per word of `prompt`."""
    heat = store.heat((image.height, image.width))
    words = []
    for word, positions in word_tokens(pipe.tokenizer, strip_extra_networks(prompt)):
        total = heat[positions].sum(dim=0).numpy()
        normalised = (total - total.min()) / max(float(total.max() - total.min()), 1e-8)
        words.append(WordMap(word, normalised, _overlay(image, normalised)))
    return words


def word_tokens(tokenizer, prompt: str) -> list[tuple[str, list[int]]]:
    """Each word of the prompt's first 75-token chunk with its token positions in the 77-token window."""
    ids = tokenize_prompt(tokenizer, prompt).ids[0].tolist()
    words: list[tuple[str, list[int]]] = []
    current: list[int] = []
    for position, token_id in enumerate(ids[1:], start=1):
        if token_id in (tokenizer.eos_token_id, tokenizer.pad_token_id):
            break
        current.append(position)
        token = tokenizer.convert_ids_to_tokens(token_id)
        if token.endswith("</w>"):
            words.append((tokenizer.decode([ids[p] for p in current]).strip(), current))
            current = []
    return words


def _overlay(image: PIL.Image.Image, heat: np.ndarray) -> PIL.Image.Image:
    from matplotlib import colormaps

    colored = (colormaps["inferno"](heat)[..., :3] * 255).astype(np.uint8)
    gray = np.asarray(image.convert("L").convert("RGB"), dtype=np.float32)
    return PIL.Image.fromarray((0.45 * gray + 0.55 * colored).astype(np.uint8), "RGB")
