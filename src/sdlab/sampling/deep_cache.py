"""DeepCache: reuse the UNet's deep features across denoising steps (Ma, Fang & Wang, CVPR 2024).

Adjacent denoising steps change the UNet's deep (low-resolution) features little. Every `interval`
steps the UNet runs whole and the input of its last layer's deep branch is kept: the hidden state that
the last up block's last resnet concatenates with the first skip connection (`conv_in`'s output). The
steps in between run only the shallow path: the time embedding, `conv_in`, that last resnet (and its
attention) on [kept deep features, fresh skip], and the output convolution. This is DeepCache's
outermost branch (`cache_branch_id=0` in its `DeepCacheSDHelper`), the cheapest cached step.

The `DeepCache` package does the same by wrapping every block's `forward` and finding the step from
`pipe.scheduler.timesteps`; sdlab's loop has no diffusers pipeline object, and with a guidance interval
its batch changes size between steps, so this module works on diffusers' UNet blocks directly and runs
a full pass whenever the batch differs from the kept one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from diffusers import UNet2DConditionModel

from sdlab.errors import InputError

if TYPE_CHECKING:
    from sdlab.sampling.conditioning import Conditioning


def check_interval(interval: object, what: str = "deep_cache") -> int:
    """`interval` as the deep cache takes it: a positive int (1: off; a bool is not one); `InputError`,
    naming it `what`, else."""
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise InputError(f"{what} must be a positive integer (1: off), got {interval!r}")
    return interval


class DeepCache:
    """The UNet's forward with deep-feature reuse every `interval` steps (1: every step runs whole).

    `cache(step, sample, t, conditioning, timestep_cond)` returns the noise prediction like
    `UNet2DConditionModel(...).sample`: (B, C, h, w) in the UNet's dtype. A full pass keeps the features
    through a forward pre-hook that lives only for that pass; the UNet is left as it was.

    Raises `InputError` for an interval below 1 or a UNet this shortcut does not cover (class embeddings,
    or added embeddings other than SDXL's "text_time", which the shallow path adds to the time embedding
    as the UNet does)."""

    def __init__(self, unet: UNet2DConditionModel, interval: int) -> None:
        check_interval(interval, "deep cache interval")
        cfg = unet.config
        added = cfg.addition_embed_type not in (None, "text_time")
        if unet.class_embedding is not None or added or cfg.center_input_sample:
            raise InputError(
                "deep cache covers SD 1.x/2.x and SDXL UNets (no class or other added embeddings)"
            )
        self.unet = unet
        self.interval = interval
        self.block = unet.up_blocks[-1]
        self.skip_channels = unet.conv_in.out_channels
        self._kept: torch.Tensor | None = None
        self.full_passes = 0
        self.cached_passes = 0

    def _keep(self, module: torch.nn.Module, args: tuple) -> None:
        hidden = args[0]  # [deep features, conv_in's skip] concatenated on channels
        self._kept = hidden[:, : hidden.shape[1] - self.skip_channels].detach()

    def __call__(
        self,
        step: int,
        sample: torch.Tensor,
        t: torch.Tensor,
        conditioning: Conditioning,
        timestep_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kept = self._kept
        if step % self.interval == 0 or kept is None or kept.shape[0] != sample.shape[0]:
            hook = self.block.resnets[-1].register_forward_pre_hook(self._keep)
            try:  # the module's own forward: eager also where the UNet was compiled (the hook reads inside it)
                out = self.unet.forward(
                    sample, t, **conditioning.unet_kwargs(), timestep_cond=timestep_cond, return_dict=False
                )[0]
            finally:
                hook.remove()
            self.full_passes += 1
            return out
        self.cached_passes += 1
        return self._shallow(kept, sample, t, conditioning, timestep_cond)

    def _shallow(self, kept, sample, t, conditioning: Conditioning, timestep_cond) -> torch.Tensor:
        unet = self.unet
        encoder_hidden_states = conditioning.embeds
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=t), timestep_cond)
        if conditioning.pooled is not None:  # SDXL: the pooled text and size embedding, as the UNet adds it
            kwargs = conditioning.unet_kwargs()
            emb = emb + unet.get_aug_embed(emb, encoder_hidden_states, kwargs["added_cond_kwargs"])
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        skip = unet.conv_in(sample)
        hidden = self.block.resnets[-1](torch.cat([kept, skip], dim=1), emb)
        attentions = getattr(self.block, "attentions", None)
        if attentions:
            hidden = attentions[-1](hidden, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden)
