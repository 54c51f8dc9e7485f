"""Noise schedulers by name: each one a diffusers scheduler configured from the model's own config.

A model's `scheduler_config` fixes the training noise schedule (betas, timesteps, prediction type);
the scheduler class only decides how to walk it at inference time, so any of these can be swapped in.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import diffusers
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from sdlab.errors import InputError


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


def make_scheduler(name: str, config: dict[str, Any]) -> SchedulerMixin:
    """A fresh scheduler `name` (see `SCHEDULERS`) on the noise schedule of `config`."""
    spec = scheduler_spec(name)
    cls = getattr(diffusers, spec.cls)
    # The config may come from another scheduler class (SD ships PNDM's): keep what this class
    # understands (the noise schedule, prediction type, spacing), but not another sampler's options
    # such as Karras sigmas, which only `spec.overrides` may set.
    accepted = set(inspect.signature(cls.__init__).parameters) - {
        "self",
        "use_karras_sigmas",
        "algorithm_type",
        "solver_order",
    }
    base = {k: v for k, v in config.items() if k in accepted}
    return cls.from_config({**base, **spec.overrides})


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


def scheduler_from_a1111(sampler: str) -> str:
    """Map an A1111 sampler name ("DPM++ 2M Karras") back to sdlab's ("dpmpp_2m_karras")."""
    for name, spec in SCHEDULERS.items():
        if spec.a1111 == sampler:
            return name
    raise InputError(
        f"sampler {sampler!r} has no sdlab scheduler; known: {', '.join(s.a1111 for s in SCHEDULERS.values())}"
    )
