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
from tqdm.auto import tqdm
from transformers import CLIPTextModel, PreTrainedTokenizerBase


def contrastive_pretrain(
    text_encoder: CLIPTextModel,
    tokenizer: PreTrainedTokenizerBase,
    captions: list[Callable[[random.Random], str]],
    image_features: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    log: Callable[[int, float, float], None] | None = None,
) -> CLIPTextModel:
    """Train `text_encoder` in place so that caption i picks image i out of a batch; returns it.

    `captions[i](rng)` draws a phrasing of image i's caption; `image_features` is (N, D), frozen.
    `log(step, loss, batch accuracy)` is called after every step."""
    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    width = text_encoder.config.hidden_size
    features = (image_features - image_features.mean(0)) / image_features.std(0).clamp_min(1e-6)
    image_proj = nn.Linear(features.shape[1], width)
    text_proj = nn.Linear(width, width)
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
    params = [*text_encoder.parameters(), *image_proj.parameters(), *text_proj.parameters(), logit_scale]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    text_encoder.train()
    for step in tqdm(range(steps), desc="text encoder (contrastive)"):
        idx = torch.randperm(len(features), generator=generator)[:batch_size]
        ids = tokenizer(
            [captions[i](rng) for i in idx.tolist()],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        text = nn.functional.normalize(text_proj(text_encoder(ids)[0].mean(dim=1)), dim=-1)
        image = nn.functional.normalize(image_proj(features[idx]), dim=-1)
        logits = logit_scale.clamp(max=math.log(100)).exp() * text @ image.T
        target = torch.arange(len(idx))
        loss = (
            nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)
        ) / 2
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        if log is not None:
            log(step + 1, loss.item(), (logits.argmax(1) == target).float().mean().item())
    return text_encoder.eval()
