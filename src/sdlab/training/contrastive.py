"""CLIP's recipe in miniature: a text encoder learns what captions mean by matching them to images.

Stable Diffusion never trains its text encoder: it borrows CLIP's, which learned contrastively to pick
out, among a batch of images, the one a caption describes (Radford et al. 2021). A text encoder trained
from scratch jointly with the UNet has to discover the same thing from the noise-prediction loss alone,
and that is the slow part of training a small model: the UNet learns to draw digits long before it
learns which digit a caption asks for. This stage gives the text encoder CLIP's head start.

The image side is frozen features (for the digits: the captioner's penultimate layer and the measured
style); both sides get a linear projection and the symmetric InfoNCE loss with a learned temperature.
The text side is the mean of the last hidden states over all 77 positions, because the UNet's
cross-attention reads every position, not only CLIP's pooled end token.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
from torch import nn
from transformers import CLIPTextModel, PreTrainedTokenizerBase

from sdlab.training.data import CaptionTokens
from sdlab.training.loop import TrainLoop


class ContrastiveHead(nn.Module):
    """CLIP's two projections into one space and its learned temperature; `forward` gives the symmetric
    InfoNCE loss of a batch of (text hidden states, image features) pairs and the share matched right."""

    def __init__(self, feature_dim: int, width: int) -> None:
        super().__init__()
        self.image_proj = nn.Linear(feature_dim, width)
        self.text_proj = nn.Linear(width, width)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    def forward(self, hidden: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (B, 77, width), features (B, feature_dim) -> (loss, accuracy), both scalars."""
        text = nn.functional.normalize(self.text_proj(hidden.mean(dim=1)), dim=-1)
        image = nn.functional.normalize(self.image_proj(features), dim=-1)
        logits = self.logit_scale.clamp(max=math.log(100)).exp() * text @ image.T
        target = torch.arange(len(features), device=features.device)
        loss = (
            nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)
        ) / 2
        return loss, (logits.argmax(1) == target).float().mean()


def contrastive_objective(
    loop: TrainLoop,
    text_encoder: CLIPTextModel,
    head: ContrastiveHead,
    tokenizer: PreTrainedTokenizerBase,
    captions: list[Callable[[random.Random], str]],
    image_features: torch.Tensor,
) -> tuple[Callable, Callable, Callable[[], dict[str, torch.Tensor]]]:
    """`TrainLoop.run`'s (draw, loss, metrics) for matching caption i to image i among a batch.

    `captions[i](rng)` draws a phrasing of image i's caption; `image_features` is (N, D), frozen and
    standardised here. The loss compares the rows with each other: run it with `split=False`."""
    features = (image_features - image_features.mean(0)) / image_features.std(0).clamp_min(1e-6)
    last: dict[str, torch.Tensor] = {}
    tokens = CaptionTokens(tokenizer)

    def draw(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randperm(len(features), generator=loop.rng.torch)[: loop.cfg.batch_size]
        return tokens([captions[i](loop.rng.py) for i in idx.tolist()]), features[idx]

    def loss(batch: tuple[torch.Tensor, torch.Tensor], rows: slice) -> torch.Tensor:
        ids, feats = (v.to(loop.accelerator.device) for v in batch)
        value, accuracy = head(text_encoder(ids)[0], feats)
        last["batch_accuracy"] = accuracy.detach()  # read when the loop logs, not every step
        return value

    return draw, loss, lambda: dict(last)


def contrastive_pretrain(
    loop: TrainLoop,
    text_encoder: CLIPTextModel,
    tokenizer: PreTrainedTokenizerBase,
    captions: list[Callable[[random.Random], str]],
    image_features: torch.Tensor,
) -> CLIPTextModel:
    """Train `text_encoder` in place on `loop` (its steps, batch size and peak learning rate) so that caption
    i picks image i out of a batch, with a one-cycle schedule (10% warm-up, then cosine down; Smith &
    Topin 2019); returns it in eval mode. The projections are made here, from torch's global stream."""
    cfg = loop.cfg
    head = ContrastiveHead(image_features.shape[1], text_encoder.config.hidden_size)
    params = [*text_encoder.parameters(), *head.parameters()]

    def one_cycle(opt: torch.optim.Optimizer):
        momentum = "betas" in opt.defaults or "momentum" in opt.defaults  # Adafactor has neither
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.learning_rate, total_steps=cfg.steps, pct_start=0.1, cycle_momentum=momentum
        )

    text_encoder.train()
    prepared = loop.prepare(text_encoder, head, params=params, lr_schedule=one_cycle, weight_decay=1e-2)
    draw, loss, metrics = contrastive_objective(loop, *prepared, tokenizer, captions, image_features)
    loop.run(draw, loss, split=False, metrics=metrics, desc="text encoder (contrastive)")
    return text_encoder.eval()
