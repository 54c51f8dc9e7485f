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

from sdlab.sampling.conditioning import Conditioning, PromptSchedule
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
    """`denoiser(sample, t, step) -> Prediction`: the UNet on the prompts' conditioning at `step` (`cond`,
    a `PromptSchedule`), and where `guided[step]`, also on the negative prompts' (`uncond`) in the same
    batch, mixed by `guided_noise` (and rescaled by `guidance_rescale`, Lin et al. 2023). Counts UNet
    evaluations per image.

    Composed prompts (A1111's AND, Liu et al. 2022) run each part beside the negative prompt and add the
    parts' weighted directions: eps = eps_uncond + s * sum_k w_k (eps_k - eps_uncond), A1111's
    `combine_denoised`; steps outside the guidance interval take s = 1 (the unconditional branch still runs,
    as A1111 runs it). One part of weight 1 is plain guidance."""

    def __init__(
        self,
        model: UNetModel,
        cond: PromptSchedule,
        uncond: PromptSchedule | None,
        guidance_scale: float,
        guided: list[bool],
        guidance_rescale: float = 0.0,
    ) -> None:
        self.model, self.cond, self.uncond = model, cond, uncond
        self.guidance_scale, self.guidance_rescale = guidance_scale, guidance_rescale
        self.guided = guided
        self.evaluations = 0
        self._both: tuple[tuple[int, int], Conditioning] | None = None

    def __call__(self, sample: torch.Tensor, t: torch.Tensor, step: int) -> Prediction:
        cond = self.cond.at(step)
        if self.uncond is None or not (self.guided[step] or self.cond.composed):
            self.evaluations += 1
            noise = self.model(sample, t, step, cond)
            return Prediction(noise, sample, noise)
        uncond = self.uncond.at(step)
        both = self._pair(uncond, cond)
        scale = self.guidance_scale if self.guided[step] else 1.0
        if not self.cond.composed:
            self.evaluations += 2
            noise_uncond, noise_cond = self.model(torch.cat([sample] * 2), t, step, both).chunk(2)
            noise = guided_noise(noise_uncond, noise_cond, scale)
        else:
            owner, weights = self.cond.owner, self.cond.weights
            images = sample.shape[0]
            self.evaluations += math.ceil((images + len(owner)) / images)
            rows = torch.cat([torch.arange(images, device=owner.device), owner])
            out = self.model(torch.cat([sample, sample[owner]]), t, step, both, rows=rows)
            noise_uncond, parts = out[:images], out[images:]
            weighted = (parts - noise_uncond[owner]) * weights.to(parts.dtype).view(
                -1, *[1] * (parts.dim() - 1)
            )
            direction = torch.zeros_like(noise_uncond).index_add_(0, owner, weighted)
            noise_cond = noise_uncond + direction  # the parts composed at scale 1
            noise = noise_uncond + scale * direction
        if self.guidance_rescale > 0:
            noise = rescale_guided_noise(noise, noise_cond, self.guidance_rescale)
        return Prediction(noise, sample, noise_cond, noise_uncond)

    def _pair(self, uncond: Conditioning, cond: Conditioning) -> Conditioning:
        """[uncond; cond] in one batch, built again only when a prompt's text changed."""
        key = (id(uncond), id(cond))
        if self._both is None or self._both[0] != key:
            self._both = (key, Conditioning.cat([uncond, cond]))
        return self._both[1]
