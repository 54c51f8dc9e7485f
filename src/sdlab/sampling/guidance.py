"""Classifier-free guidance: which steps are guided, what that costs, and the guided denoiser.

Guidance runs the UNet twice at a step, with the prompt and with the negative (or empty) prompt, and
extrapolates from the second towards the first (Ho & Salimans 2022). A guidance interval guides only
the steps whose noise level sigma = sqrt((1 - alpha_bar_t) / alpha_bar_t) lies in (lo, hi]; the other
steps run one conditional pass (Kynkaanniemi et al., NeurIPS 2024).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from sdlab.sampling.conditioning import Conditioning
from sdlab.sampling.denoisers import Prediction, UNetModel
from sdlab.sampling.gradient_guidance import alpha_bar_at
from sdlab.sampling.latents import guided_noise, rescale_guided_noise
from sdlab.sampling.params import check_guidance_interval

if TYPE_CHECKING:
    from sdlab.pipeline import Pipeline


def guided_steps(alphas_cumprod: torch.Tensor, timesteps: Any, interval: Any) -> list[bool]:
    """For each timestep, whether its noise level sigma = sqrt((1 - alpha_bar) / alpha_bar) lies in the
    interval (lo, hi] and so gets classifier-free guidance (`InputError` for a bad interval). A zero
    terminal SNR step (alpha_bar 0) has sigma inf."""
    lo, hi = check_guidance_interval(interval)
    guided = []
    for t in timesteps:
        alpha_bar = alpha_bar_at(alphas_cumprod, t)
        sigma = math.inf if alpha_bar <= 0 else math.sqrt((1 - alpha_bar) / alpha_bar)
        guided.append(lo < sigma <= hi)
    return guided


def uses_guidance(unet: Any, guidance_scale: float) -> bool:
    """Whether a call runs two branches: a scale above 1, on a UNet without guidance baked in (LCM)."""
    return guidance_scale > 1 and unet.config.time_cond_proj_dim is None


def planned_unet_evaluations(
    pipe: Pipeline, scheduler: str, steps: int, guidance_scale: float, interval: Any = (0.0, None)
) -> int:
    """UNet evaluations per image of a text-to-image run, counted as `generate` will spend them: two
    per guided step, one per other step (PNDM's first step counts twice: it runs steps + 1)."""
    from sdlab.sampling.schedulers import make_scheduler

    sched = make_scheduler(scheduler, pipe.scheduler_config)
    sched.set_timesteps(steps)
    guided = guided_steps(sched.alphas_cumprod, sched.timesteps, interval)
    return sum(2 if uses_guidance(pipe.unet, guidance_scale) and g else 1 for g in guided)


class ClassifierFreeGuidance:
    """`denoiser(sample, t, step) -> Prediction`: the UNet on the prompts' conditioning `cond` (B rows), and
    where `guided[step]`, also on the negative prompts' `uncond` (B rows) in the same batch, mixed by `guided_noise` (and
    rescaled by `guidance_rescale`, Lin et al. 2023). Counts UNet evaluations per image."""

    def __init__(
        self,
        model: UNetModel,
        cond: Conditioning,
        uncond: Conditioning | None,
        guidance_scale: float,
        guided: list[bool],
        guidance_rescale: float = 0.0,
    ) -> None:
        self.model, self.cond, self.uncond = model, cond, uncond
        self.both = None if uncond is None else Conditioning.cat([uncond, cond])
        self.guidance_scale, self.guidance_rescale = guidance_scale, guidance_rescale
        self.guided = guided
        self.evaluations = 0

    def __call__(self, sample: torch.Tensor, t: torch.Tensor, step: int) -> Prediction:
        if self.both is None or not self.guided[step]:
            self.evaluations += 1
            noise = self.model(sample, t, step, self.cond)
            return Prediction(noise, sample, noise)
        self.evaluations += 2
        uncond, cond = self.model(torch.cat([sample] * 2), t, step, self.both).chunk(2)
        noise = guided_noise(uncond, cond, self.guidance_scale)
        if self.guidance_rescale > 0:
            noise = rescale_guided_noise(noise, cond, self.guidance_rescale)
        return Prediction(noise, sample, cond, uncond)
