"""Noise schedulers by name: each one a diffusers scheduler configured from the model's own config.

A model's `scheduler_config` fixes the training noise schedule (betas, timesteps, prediction type);
the scheduler class only decides how to walk it at inference time, so any of these can be swapped in.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sdlab.errors import InputError

if TYPE_CHECKING:  # the names table is read by the CLI's --help, which must not import diffusers
    from diffusers.schedulers.scheduling_utils import SchedulerMixin


@dataclass(frozen=True)
class SchedulerSpec:
    cls: str  # diffusers class name
    a1111: str  # the sampler's name in AUTOMATIC1111's web UI and in PNG "parameters"
    overrides: dict[str, Any] = field(default_factory=dict)


SCHEDULERS: dict[str, SchedulerSpec] = {
    "ddpm": SchedulerSpec("DDPMScheduler", "DDPM"),
    "ddim": SchedulerSpec("DDIMScheduler", "DDIM"),
    "pndm": SchedulerSpec("PNDMScheduler", "PLMS"),
    "lms": SchedulerSpec("LMSDiscreteScheduler", "LMS"),
    "euler": SchedulerSpec("EulerDiscreteScheduler", "Euler"),
    "euler_a": SchedulerSpec("EulerAncestralDiscreteScheduler", "Euler a"),
    "heun": SchedulerSpec("HeunDiscreteScheduler", "Heun"),
    "dpmpp_2m": SchedulerSpec(
        "DPMSolverMultistepScheduler", "DPM++ 2M", {"algorithm_type": "dpmsolver++", "solver_order": 2}
    ),
    "dpmpp_2m_karras": SchedulerSpec(
        "DPMSolverMultistepScheduler",
        "DPM++ 2M Karras",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "unipc": SchedulerSpec("UniPCMultistepScheduler", "UniPC"),
    "lcm": SchedulerSpec("LCMScheduler", "LCM"),
}


# A1111 1.9+'s "Schedule type". Uniform is the timestep spacing the model's config gives, as automatic;
# SGM Uniform is diffusers' "trailing" spacing (the last step at t = 999), which SDXL-Turbo and Lightning use;
# Karras, Exponential and Beta are diffusers' `use_karras_sigmas`, `use_exponential_sigmas` and
# `use_beta_sigmas` (Beta with alpha = beta = 0.6, A1111's defaults too)
SCHEDULE_TYPES = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "sgm_uniform": "SGM Uniform",
    "beta": "Beta",
}
SIGMA_SCHEDULES = ("karras", "exponential", "beta")  # sigma spacings, on samplers that walk sigmas
# A1111 1.10's other schedule types, refused by name until sdlab has them
A1111_ONLY_SCHEDULES = {"polyexponential": "Polyexponential", "kl_optimal": "KL Optimal",
                        "align_your_steps": "Align Your Steps", "simple": "Simple", "normal": "Normal", "ddim": "DDIM"}  # fmt: skip
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")  # diffusers' `timestep_spacing`
SAMPLER_ALIASES = {name: [name, f"k_{name}"] for name in SCHEDULERS}


def make_scheduler(
    name: str,
    config: dict[str, Any],
    *,
    inpainting: bool = False,
    timestep_spacing: str | None = None,
    sigma_schedule: str | None = None,
) -> SchedulerMixin:
    """A fresh scheduler `name` (see `SCHEDULERS`) on the noise schedule of `config`, spacing its steps
    as `timestep_spacing` says where given ("leading", "linspace", "trailing"), else as `config` does, and
    its sigmas as `sigma_schedule` says ("karras", "exponential", "beta"; `InputError` for a sampler that
    does not walk sigmas).

    The corrections diffusers' Stable Diffusion pipelines make to their scheduler's config when they
    are built apply here too (`StableDiffusionPipeline.__init__` and its img2img/inpaint siblings):
    `steps_offset` becomes 1, `clip_sample` False, and for inpainting `skip_prk_steps` True. Many SD
    folders ship PNDM's config, without `clip_sample`; DDIM's default would then clip x0 to [-1, 1].
    (diffusers' inpainting pipeline alone leaves `clip_sample` as it is; sdlab corrects it there too,
    since SD latents are not in [-1, 1].)
    """
    import diffusers

    spec = scheduler_spec(name)
    cls = getattr(diffusers, spec.cls)
    # The config may come from another scheduler class (SD ships PNDM's): keep what this class
    # understands (the noise schedule, prediction type, spacing), but not another sampler's options
    # such as Karras sigmas, which only `spec.overrides` may set.
    own = set(inspect.signature(cls.__init__).parameters)
    accepted = own - {"self", "algorithm_type", "solver_order", *(f"use_{s}_sigmas" for s in SIGMA_SCHEDULES)}
    base = {k: v for k, v in config.items() if k in accepted}
    if sigma_schedule is not None:
        if f"use_{sigma_schedule}_sigmas" not in own:
            able = [spec.a1111 for n, spec in SCHEDULERS.items() if _walks_sigmas(n)]
            raise InputError(
                f"sampler {spec.a1111!r} has no {SCHEDULE_TYPES.get(sigma_schedule, sigma_schedule)} schedule; "
                f"sigma schedules work with: {', '.join(able)}"
            )
        base[f"use_{sigma_schedule}_sigmas"] = True
    if timestep_spacing is not None:
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise InputError(
                f"unknown timestep_spacing {timestep_spacing!r}; use {', '.join(TIMESTEP_SPACINGS)}"
            )
        base["timestep_spacing"] = timestep_spacing
    scheduler = cls.from_config({**base, **spec.overrides})
    corrections = {}
    if scheduler.config.get("steps_offset", 1) != 1:
        corrections["steps_offset"] = 1
    if scheduler.config.get("clip_sample", False) is True:
        corrections["clip_sample"] = False
    if inpainting and scheduler.config.get("skip_prk_steps", True) is False:
        corrections["skip_prk_steps"] = True
    scheduler.register_to_config(**corrections)  # as the pipelines do: the config, which step() reads
    return scheduler


def _walks_sigmas(name: str) -> bool:
    import diffusers

    cls = getattr(diffusers, SCHEDULERS[name].cls)
    return "use_karras_sigmas" in inspect.signature(cls.__init__).parameters and not name.endswith("_karras")


def scheduler_spec(name: str) -> SchedulerSpec:
    if name not in SCHEDULERS:
        raise InputError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name]


def scheduler_name_from_config(config: dict[str, Any]) -> str:
    """The sdlab name of the scheduler a model was saved with (its default), e.g. "pndm" for SD 1.5."""
    cls = config.get("_class_name", "PNDMScheduler")
    karras = bool(config.get("use_karras_sigmas"))
    for name, spec in SCHEDULERS.items():
        if spec.cls == cls and bool(spec.overrides.get("use_karras_sigmas")) == karras:
            return name
    return "pndm"


def a1111_sampler(
    name: str, timestep_spacing: str | None = None, sigma_schedule: str | None = None
) -> tuple[str, str | None]:
    """(Sampler, Schedule type) as AUTOMATIC1111 1.9+ writes them: "dpmpp_2m_karras" -> ("DPM++ 2M", "Karras");
    a sigma schedule is its name ("Exponential"); trailing spacing is "SGM Uniform"; a sampler on its model's
    own schedule has no schedule type: "euler" -> ("Euler", None)."""
    sampler = scheduler_spec(name).a1111
    if sampler.endswith(" Karras"):
        return sampler.removesuffix(" Karras"), "Karras"
    if sigma_schedule is not None:
        return sampler, SCHEDULE_TYPES[sigma_schedule]
    return sampler, SCHEDULE_TYPES["sgm_uniform"] if timestep_spacing == "trailing" else None


def schedule_settings(schedule: str | None, scheduler: str | None = None) -> dict[str, str | None]:
    """The `SamplingParams` settings an A1111 schedule type asks for with `scheduler`: `timestep_spacing`
    ("trailing" for SGM Uniform) and `sigma_schedule` (Karras, Exponential, Beta; none where the scheduler's
    name already says Karras). `InputError` naming an A1111 type sdlab does not have, or an unknown one."""
    kind = _schedule_kind(schedule)
    sigmas = kind if kind in SIGMA_SCHEDULES and not (scheduler or "").endswith("_karras") else None
    return {"timestep_spacing": "trailing" if kind == "sgm_uniform" else None, "sigma_schedule": sigmas}


def _schedule_kind(schedule: str | None) -> str:
    kind = (schedule or "automatic").strip().lower().replace(" ", "_")
    if kind in A1111_ONLY_SCHEDULES:
        raise InputError(
            f"schedule type {A1111_ONLY_SCHEDULES[kind]!r} is one of A1111's that sdlab does not have yet; "
            f"sdlab has: {', '.join(SCHEDULE_TYPES.values())}"
        )
    if kind not in SCHEDULE_TYPES:
        raise InputError(
            f"unknown schedule type {schedule!r}; sdlab has: {', '.join(SCHEDULE_TYPES.values())}"
        )
    return kind


def resolve_sampler(sampler_name: str | None, schedule: str | None) -> str | None:
    """sdlab's scheduler for an A1111 sampler name ("DPM++ 2M", or sdlab's own "dpmpp_2m") and schedule
    type ("automatic", "karras"); None when neither is given (the model's own). InputError if unknown."""
    base = None
    if sampler_name:
        wanted = sampler_name.strip().lower()
        for name, spec in SCHEDULERS.items():
            if wanted == spec.a1111.lower() or wanted in SAMPLER_ALIASES[name]:
                base = name
        if base is None:
            known = ", ".join(spec.a1111 for spec in SCHEDULERS.values())
            raise InputError(f"unknown sampler {sampler_name!r}; sdlab has: {known}")
    kind = _schedule_kind(schedule)
    if kind == "karras" and base is not None and f"{base}_karras" in SCHEDULERS:
        base = f"{base}_karras"  # A1111's older name for it; other samplers take `sigma_schedule`
    return base
