"""What the UNet is conditioned on besides the noisy latent: the prompt's embeddings, and for SDXL the
pooled text embedding and the size ids ("micro-conditioning", Podell et al. 2023, section 2.2).

SD 1.x/2.x: one text encoder's last layer (B, 77 * chunks, 768 or 1024).
SDXL: both encoders' penultimate layers concatenated on features (768 + 1280 = 2048), OpenCLIP bigG's
pooled and projected embedding (B, 1280), and six size ids per image, (original height, width, crop
top, left, target height, width), each embedded like a timestep. The refiner has bigG alone and ends
its ids with an aesthetic score instead of the target size (five ids).

As diffusers' `StableDiffusionXLPipeline.encode_prompt` and `_get_add_time_ids`, with A1111's prompt
syntax and 75-token chunks applied to each encoder (the pooled embedding from the first chunk), and an
empty negative prompt all zeros on models with `force_zeros_for_empty_prompt` (diffusers and A1111 both).

A1111's prompt editing and AND make the conditioning change between steps and an image take several
parts: `schedule_conditioning` encodes every text any step needs once and gives a `PromptSchedule`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from sdlab.errors import InputError
from sdlab.prompt_editing import prompt_schedule, split_and, text_at
from sdlab.prompts import count_chunks, encode_prompts, hidden_layer
from sdlab.sampling.params import SDXL_ONLY, SamplingParams

if TYPE_CHECKING:
    from sdlab.pipeline import Pipeline


@dataclass
class Conditioning:
    """The UNet's conditioning for a batch of B images.

    `embeds` (B, L, D) for cross-attention; for SDXL also `pooled` (B, P) and `time_ids` (B, 6), or (B, 5)
    for the refiner; all in the UNet's dtype and on its device."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def unet_kwargs(self) -> dict[str, Any]:
        """The keyword arguments `UNet2DConditionModel.forward` takes for it."""
        if self.pooled is None:
            return {"encoder_hidden_states": self.embeds}
        added = {"text_embeds": self.pooled, "time_ids": self.time_ids}
        return {"encoder_hidden_states": self.embeds, "added_cond_kwargs": added}

    def repeat(self, times: int) -> Conditioning:
        """Each row `times` times in a row (the batch tiled `times` over, as `torch.cat([x] * times)`)."""
        return self.cat([self] * times)

    def select(self, rows: list[int] | torch.Tensor) -> Conditioning:
        """These rows, in this order (a row may repeat)."""
        pooled = None if self.pooled is None else self.pooled[rows]
        time_ids = None if self.time_ids is None else self.time_ids[rows]
        return Conditioning(self.embeds[rows], pooled, time_ids)

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """The batches one after another, as `torch.cat` on dim 0."""
        first = parts[0]
        pooled = None if first.pooled is None else torch.cat([c.pooled for c in parts])
        time_ids = None if first.time_ids is None else torch.cat([c.time_ids for c in parts])
        return Conditioning(torch.cat([c.embeds for c in parts]), pooled, time_ids)


def encode_conditioning(
    pipe: Pipeline, p: SamplingParams, prompts: list[str], negatives: list[str] | None
) -> tuple[Conditioning, Conditioning | None]:
    """(the prompts' conditioning, the negative prompts' or None where the call is unguided).

    `p` is resolved: `height`, `width` and, for SDXL, `original_size` and `target_size` are set. Each
    distinct text is encoded once and repeated, as diffusers does: -n 16 is one encoder pass, not 32.
    Raises `InputError` for SDXL-only settings on another model and for a `clip_skip` past the encoder."""
    check_family_settings(pipe, p)
    texts = prompts + (negatives or [])
    distinct = list(dict.fromkeys(texts))
    layer, final_norm = hidden_layer(pipe.family, p.clip_skip)
    encoders = pipe.text_encoders
    chunks = max(count_chunks(tokenizer, distinct) for tokenizer, _ in encoders)
    hidden, pooled = [], None
    for tokenizer, encoder in encoders:
        _check_layer(encoder, layer, p.clip_skip)
        out = encode_prompts(tokenizer, encoder, distinct, chunks, layer=layer, final_norm=final_norm)
        hidden.append(out.hidden)
        pooled = out.pooled if out.pooled is not None else pooled
    embeds = torch.cat(hidden, dim=-1).to(pipe.dtype)

    def rows(selected: list[str], negative: bool) -> Conditioning:
        index = [distinct.index(t) for t in selected]
        c = Conditioning(embeds[index])
        if pipe.is_sdxl:
            c.pooled = pooled[index].to(pipe.dtype)
            c.time_ids = time_ids(pipe, p, negative).to(pipe.device, pipe.dtype).expand(len(index), -1)
            if negative and pipe.force_zeros_for_empty_prompt:
                empty = torch.tensor([t == "" for t in selected], device=embeds.device)
                c.embeds = torch.where(empty[:, None, None], 0, c.embeds)
                c.pooled = torch.where(empty[:, None], 0, c.pooled)
        return c

    return rows(prompts, False), None if negatives is None else rows(negatives, True)


@dataclass
class PromptSchedule:
    """A batch's conditioning at each step of a call, for A1111's prompt editing and AND.

    `table` holds each distinct text's conditioning once; `rows[step]` names the table row of each of the
    batch's parts at that loop step (the last entry serves later steps). Without AND a part is an image.
    With AND an image has several parts: `owner` (P,) int64 says whose each part is, and `weights` (P,)
    float32 its weight (A1111's `get_multicond_prompt_list`); both None for one part of weight 1 per image."""

    table: Conditioning
    rows: list[tuple[int, ...]]
    owner: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self._at: dict[tuple[int, ...], Conditioning] = {}

    def at(self, step: int) -> Conditioning:
        """The parts' conditioning at loop step `step` (from 0)."""
        key = self.rows[min(step, len(self.rows) - 1)]
        if key not in self._at:
            self._at[key] = self.table.select(list(key))
        return self._at[key]

    @property
    def composed(self) -> bool:
        """Whether guidance must compose parts (AND, or a part's weight other than 1)."""
        return self.owner is not None


def schedule_conditioning(
    pipe: Pipeline, p: SamplingParams, prompts: list[str], negatives: list[str] | None, steps_run: int,
    order: int = 1,
) -> tuple[PromptSchedule, PromptSchedule | None]:  # fmt: skip
    """The conditioning of the prompts and the negative prompts at each of the `steps_run` loop steps:
    A1111's prompt editing read on `p.num_inference_steps` x `order` steps (a second-order sampler such as
    Heun calls the model twice a step, and A1111 schedules on both) (`sdlab.prompt_editing`), each prompt split
    at AND into weighted parts, and every distinct text encoded once (`encode_conditioning`).

    Raises `InputError` for AND (or a part weight) without classifier-free guidance (`negatives` None):
    composable diffusion adds each part's guidance direction, which needs the unconditional branch."""
    parts = [split_and(prompt) for prompt in prompts]
    composed = any(len(split) > 1 or split[0][1] != 1.0 for split in parts)
    if composed and negatives is None:
        raise InputError(
            "AND (composable diffusion, or a prompt ending in :WEIGHT) needs classifier-free guidance: "
            "a CFG scale above 1 on a model without guidance distilled in"
        )
    texts = [text for split in parts for text, _ in split]
    steps = p.num_inference_steps * order  # A1111 counts each of a second-order sampler's model calls a step
    schedules = {text: prompt_schedule(text, steps) for text in dict.fromkeys(texts + (negatives or []))}

    def per_step(selected: list[str]) -> tuple[list[str], list[tuple[int, ...]]]:
        at = [[text_at(schedules[text], step) for text in selected] for step in range(max(1, steps_run))]
        distinct = list(dict.fromkeys(text for step in at for text in step))
        index = {text: i for i, text in enumerate(distinct)}
        return distinct, [tuple(index[text] for text in step) for step in at]

    positive, positive_rows = per_step(texts)
    negative, negative_rows = per_step(negatives) if negatives is not None else (None, None)
    cond, uncond = encode_conditioning(pipe, p, positive, negative)
    owner = weights = None
    if composed:
        owner = torch.tensor([i for i, split in enumerate(parts) for _ in split], device=pipe.device)
        weights = torch.tensor(
            [w for split in parts for _, w in split], device=pipe.device, dtype=torch.float32
        )
    scheduled = PromptSchedule(cond, positive_rows, owner, weights)
    return scheduled, None if uncond is None else PromptSchedule(uncond, negative_rows)


def time_ids(pipe: Pipeline, p: SamplingParams, negative: bool = False) -> torch.Tensor:
    """SDXL's size ids (1, 6): original (h, w) + crop top-left (top, left) + target (h, w); for the
    refiner (1, 5): original + crop + aesthetic score. The negative ids use the `negative_*` settings,
    each defaulting to its positive one (diffusers: `negative_add_time_ids`). Float32; pixels."""
    pick = (lambda name: _first(getattr(p, "negative_" + name), getattr(p, name))) if negative else (
        lambda name: getattr(p, name)
    )  # fmt: skip
    ids = [*pick("original_size"), *pick("crops_coords_top_left")]
    ids += [pick("aesthetic_score")] if pipe.requires_aesthetics_score else [*pick("target_size")]
    expected = pipe.unet.add_embedding.linear_1.in_features
    given = pipe.unet.config.addition_time_embed_dim * len(ids) + pooled_dim(pipe)
    if given != expected:
        raise InputError(
            f"this SDXL UNet takes {expected} added features, but {len(ids)} size ids and a pooled embedding of "
            f"{pooled_dim(pipe)} make {given}; is the text encoder the UNet's own?"
        )
    return torch.tensor([ids], dtype=torch.float32)


def pooled_dim(pipe: Pipeline) -> int:
    """The width of the pooled text embedding: the last encoder's projection."""
    return pipe.text_encoders[-1][1].config.projection_dim


def check_family_settings(pipe: Pipeline, p: SamplingParams) -> None:
    """`InputError` for an SDXL-only setting given to an SD 1.x/2.x model, or an aesthetic score to a
    model other than the refiner, which is the only one trained with it."""
    if not pipe.is_sdxl:
        given = [
            name
            for name in SDXL_ONLY
            if getattr(p, name) != SamplingParams.__dataclass_fields__[name].default
        ]
        if given:
            raise InputError(
                f"{given[0]} conditions SDXL models only; this model is {pipe.family}. Leave it out."
            )
    elif not pipe.requires_aesthetics_score:
        for name in ("aesthetic_score", "negative_aesthetic_score"):
            if getattr(p, name) != SamplingParams.__dataclass_fields__[name].default:
                raise InputError(f"{name} conditions the SDXL refiner only; this model is {pipe.family}")


def _check_layer(encoder: torch.nn.Module, layer: int | None, clip_skip: int) -> None:
    layers = encoder.config.num_hidden_layers
    if layer is not None and -layer > layers + 1:  # hidden_states: the embeddings, then each layer
        raise InputError(f"clip_skip {clip_skip} skips past this text encoder's {layers} layers")


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)
