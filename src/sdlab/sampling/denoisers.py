"""The denoiser the loop calls: the UNet with its conditioning, wrapped in what a call asks for.

As k-diffusion and ComfyUI wrap their model (`CFGDenoiser`, `model_sampling`), the loop sees one
callable, `denoiser(sample, t, step) -> Prediction`, and never the branches inside it:

    UNetModel            the UNet with the call's conditioning (text, SDXL's pooled text and sizes,
                         LCM's guidance embedding, the inpainting UNet's extra channels), run whole or
                         through a `DeepCache`
    ClassifierFreeGuidance   two branches where the step is guided, one elsewhere (`sampling.guidance`)
    GradientGuidance     moves the prediction along a score's gradient (`sampling.gradient_guidance`)

`sample` is x_t after the scheduler's `scale_model_input` (variance-preserving), (B, C, h, w).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdlab.sampling.conditioning import Conditioning
from sdlab.sampling.deep_cache import DeepCache


@dataclass
class Prediction:
    """What a denoiser computed at one step, all (B, C, h, w) in the UNet's dtype.

    `noise_pred` is what the scheduler gets; `noise_cond`/`noise_uncond` are the two guidance branches
    (`noise_uncond` None where the step was not guided); `sample` is the x_t the UNet saw."""

    noise_pred: torch.Tensor
    sample: torch.Tensor
    noise_cond: torch.Tensor
    noise_uncond: torch.Tensor | None = None


class UNetModel:
    """`model(x, t, step, conditioning) -> UNet output` for a batch of any size (`conditioning` has as
    many rows as `x`: `sampling.conditioning.Conditioning`).

    - `timestep_cond` (B, D): the guidance-scale embedding a guidance-distilled (LCM) UNet takes;
    - `inpainting` (mask (B, 1, h, w), masked-image latents (B, 4, h, w)): the extra input channels of a
      9-channel inpainting UNet, repeated when guidance doubles the batch;
    - `deep_cache` > 1 runs the UNet through `DeepCache` (whole every N calls, shallow in between);
    - `keep_outputs` copies each output: a UNet compiled with CUDA graphs writes every call's output into
      the same buffer, and multistep samplers (PNDM, DPM++, UniPC) keep earlier outputs."""

    def __init__(
        self,
        unet: torch.nn.Module,
        *,
        timestep_cond: torch.Tensor | None = None,
        inpainting: tuple[torch.Tensor, torch.Tensor] | None = None,
        deep_cache: int = 1,
        keep_outputs: bool = False,
    ) -> None:
        self.unet = unet
        self.keep_outputs = keep_outputs
        self.timestep_cond = timestep_cond
        self.inpainting = inpainting
        self.cache = DeepCache(unet, deep_cache) if deep_cache > 1 else None

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, step: int, conditioning: Conditioning,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """`rows` (len(x),) names the image each row of `x` belongs to, where it is not the batch repeated
        (AND's parts); the per-image inputs (inpainting channels, guidance embedding) follow it."""
        if self.inpainting is not None:
            repeat = x.shape[0] // self.inpainting[0].shape[0]
            extras = [
                extra[rows] if rows is not None else torch.cat([extra] * repeat) for extra in self.inpainting
            ]
            x = torch.cat([x, *extras], dim=1)
        cond = self.timestep_cond
        if cond is not None and rows is not None:
            cond = cond[rows]
        elif cond is not None and cond.shape[0] != x.shape[0]:
            cond = torch.cat([cond] * (x.shape[0] // cond.shape[0]))
        if self.cache is not None:
            return self.cache(step, x, t, conditioning, cond)
        out = self.unet(x, t, **conditioning.unet_kwargs(), timestep_cond=cond, return_dict=False)[0]
        return out.clone() if self.keep_outputs else out
