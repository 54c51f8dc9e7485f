"""The sampling settings few-step models' cards prescribe, by name (`--preset NAME`).

A distilled model (a UNet, or a LoRA on the base model) is trained for one sampler, one spread of
timesteps, a fixed number of steps and no classifier-free guidance; at a base model's 30 steps and
CFG 7.5 it burns its images. Its weights do not say so, and A1111 and ComfyUI leave the settings to the
user. A preset is a package like a model's `sdlab.json` recommendation (`SamplingParams.resolve`), and
replaces it: the fields a call leaves out take the preset's values.

Each entry quotes its model card. SDXL-Lightning's and Hyper-SD's 1-step models are left out: they
need a `sample` prediction type or TCD's fixed timestep, which are not sampling settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdlab.sampling.params import SamplingParams


@dataclass(frozen=True)
class Preset:
    settings: dict[str, Any]  # `SamplingParams` package fields
    card: str  # where the settings come from

    def params(self) -> SamplingParams:
        from sdlab.sampling.params import SamplingParams

        return SamplingParams(**self.settings)


def _lightning(steps: int) -> Preset:
    return Preset(
        dict(scheduler="euler", timestep_spacing="trailing", num_inference_steps=steps, guidance_scale=0.0),
        f"ByteDance/SDXL-Lightning, {steps}-step UNet or LoRA: EulerDiscreteScheduler with timestep_spacing "
        f'"trailing", guidance_scale=0, num_inference_steps={steps}',
    )


def _hyper(steps: int) -> Preset:
    return Preset(
        dict(scheduler="ddim", timestep_spacing="trailing", num_inference_steps=steps, guidance_scale=0.0),
        f'ByteDance/Hyper-SD, Hyper-SDXL-{steps}steps-lora: DDIMScheduler with timestep_spacing "trailing", '
        f"guidance_scale=0, num_inference_steps={steps}",
    )


PRESETS: dict[str, Preset] = {
    "sdxl-turbo": Preset(
        dict(scheduler="euler_a", timestep_spacing="trailing", num_inference_steps=1, guidance_scale=0.0),
        'stabilityai/sdxl-turbo: EulerAncestralDiscreteScheduler with timestep_spacing "trailing" (its '
        "scheduler config), guidance_scale=0.0, 1 step (up to 4), at 512x512",
    ),
    **{f"sdxl-lightning-{n}step": _lightning(n) for n in (2, 4, 8)},
    **{f"hyper-sdxl-{n}step": _hyper(n) for n in (2, 4, 8)},
    "hyper-sdxl-8step-cfg": Preset(
        dict(scheduler="ddim", timestep_spacing="trailing", num_inference_steps=8, guidance_scale=5.0),
        "ByteDance/Hyper-SD, Hyper-SDXL-8steps-CFG-lora: DDIM trailing, guidance_scale=5.0 (5-8), with a "
        "negative prompt",
    ),
    "lcm-lora-sdxl": Preset(
        dict(scheduler="lcm", num_inference_steps=4, guidance_scale=1.0),
        "latent-consistency/lcm-lora-sdxl: LCMScheduler, num_inference_steps=4 (2-8), guidance_scale=1 (none)",
    ),
    "lcm-lora-sdv1-5": Preset(
        dict(scheduler="lcm", num_inference_steps=4, guidance_scale=1.0),
        "latent-consistency/lcm-lora-sdv1-5: LCMScheduler, num_inference_steps=4 (2-8), guidance_scale=1 (none)",
    ),
}
