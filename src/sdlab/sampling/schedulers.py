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


# A1111 1.10's "Schedule type" (`modules/sd_schedulers.py`). Uniform is the timestep spacing the model's config
# gives, as automatic; SGM Uniform is diffusers' "trailing" spacing (the last step at t = 999), which SDXL-Turbo
# and Lightning use; Karras, Exponential and Beta are diffusers' `use_karras_sigmas`, `use_exponential_sigmas`
# and `use_beta_sigmas` (Beta with alpha = beta = 0.6, A1111's defaults too), and Polyexponential at A1111's
# rho 1 is the exponential one; the others are A1111's functions, given to the scheduler as explicit sigmas
# (Euler) or, where they are whole timesteps (Simple, DDIM), as explicit timesteps (`explicit_schedule`)
SCHEDULE_TYPES = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "polyexponential": "Polyexponential",
    "sgm_uniform": "SGM Uniform",
    "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps",
    "simple": "Simple",
    "normal": "Normal",
    "ddim": "DDIM",
    "beta": "Beta",
}
DIFFUSERS_SIGMAS = {
    "karras": "karras",
    "exponential": "exponential",
    "polyexponential": "exponential",
    "beta": "beta",
}
EXPLICIT_SIGMAS = (
    "kl_optimal",
    "align_your_steps",
    "normal",
)  # continuous sigmas: schedulers taking `sigmas`
EXPLICIT_TIMESTEPS = ("simple", "ddim")  # whole timesteps: schedulers taking `timesteps`
SIGMA_SCHEDULES = (*DIFFUSERS_SIGMAS, *EXPLICIT_SIGMAS, *EXPLICIT_TIMESTEPS)
# Align Your Steps' 10-step noise levels (NVIDIA's, as A1111 ships them), interpolated log-linearly to other counts
AYS_SIGMAS = {
    "sd": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
    "sdxl": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029],
}
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
    flags = {f"use_{flag}_sigmas" for flag in DIFFUSERS_SIGMAS.values()}
    accepted = own - {"self", "algorithm_type", "solver_order", *flags}
    base = {k: v for k, v in config.items() if k in accepted}
    if sigma_schedule is not None:
        able = [spec.a1111 for n, spec in SCHEDULERS.items() if takes_schedule(n, sigma_schedule)]
        if not takes_schedule(name, sigma_schedule):
            raise InputError(
                f"sampler {spec.a1111!r} has no {SCHEDULE_TYPES.get(sigma_schedule, sigma_schedule)} schedule; "
                f"it works with: {', '.join(able)}"
            )
        if sigma_schedule in DIFFUSERS_SIGMAS:
            base[f"use_{DIFFUSERS_SIGMAS[sigma_schedule]}_sigmas"] = True
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


def takes_schedule(name: str, schedule: str) -> bool:
    """Whether sampler `name` can walk schedule type `schedule`: diffusers' own sigma options, or explicit sigmas
    or timesteps in its `set_timesteps` (Euler takes both, DPM++ 2M, Heun, DDPM and LCM take timesteps)."""
    import diffusers

    cls = getattr(diffusers, SCHEDULERS[name].cls)
    if name.endswith("_karras"):
        return False
    if schedule in DIFFUSERS_SIGMAS:
        return f"use_{DIFFUSERS_SIGMAS[schedule]}_sigmas" in inspect.signature(cls.__init__).parameters
    wanted = "sigmas" if schedule in EXPLICIT_SIGMAS else "timesteps"
    return (
        wanted in inspect.signature(cls.set_timesteps).parameters and name != "unipc"
    )  # UniPC's: flow models only


def set_schedule(
    sched: SchedulerMixin,
    num_inference_steps: int,
    sigma_schedule: str | None,
    device: Any,
    *,
    sdxl: bool = False,
) -> None:
    """`sched.set_timesteps` for `num_inference_steps`, with A1111's explicit schedule types where asked
    (`explicit_schedule`); `sched.num_inference_steps` is then the count that runs (A1111's DDIM type may
    give one more)."""
    if sigma_schedule in EXPLICIT_SIGMAS or sigma_schedule in EXPLICIT_TIMESTEPS:
        sched.set_timesteps(
            device=device, **explicit_schedule(sigma_schedule, num_inference_steps, sched, sdxl=sdxl)
        )
    else:
        sched.set_timesteps(num_inference_steps, device=device)


def explicit_schedule(
    kind: str, n: int, sched: SchedulerMixin, *, sdxl: bool = False
) -> dict[str, list[float]]:
    """A1111 1.10's schedule type `kind` for `n` steps on the model's training noise levels, as its
    `sd_schedulers.py` computes them: {"sigmas": [..., last]} (KL Optimal ends at sigma_min, the others at 0) or
    {"timesteps": [...]} for the types made of whole timesteps (Simple, DDIM)."""
    import numpy as np

    acp = np.asarray(sched.alphas_cumprod, dtype=np.float64)
    sigmas = ((1 - acp) / acp) ** 0.5  # k-diffusion's DiscreteSchedule.sigmas, t = 0 .. T-1
    total = len(sigmas)
    if kind == "simple":  # sigmas[-(1 + int(x * T / n))]
        return {"timesteps": [total - 1 - int(x * total / n) for x in range(n)]}
    if kind == "ddim":  # every T // n-th timestep from 1, reversed
        return {"timesteps": list(range(1, total, max(total // n, 1)))[::-1]}
    if kind == "normal":  # n timesteps evenly from T - 1 to 0, the noise level interpolated in log sigma
        t = np.linspace(total - 1, 0, n)
        low, high = np.floor(t).astype(int), np.ceil(t).astype(int)
        logs = np.log(sigmas)
        values = np.exp((1 - (t - low)) * logs[low] + (t - low) * logs[high])
        return {"sigmas": [*values.tolist(), 0.0]}
    if kind == "kl_optimal":  # tan of a linear ramp between arctan(sigma_max) and arctan(sigma_min)
        i = np.arange(n + 1) / n
        return {"sigmas": np.tan(i * np.arctan(sigmas[0]) + (1 - i) * np.arctan(sigmas[-1])).tolist()}
    if kind == "align_your_steps":
        table = AYS_SIGMAS["sdxl" if sdxl else "sd"]
        if n == len(table):
            return {"sigmas": [*table, 0.0]}
        xs, ys = np.linspace(0, 1, len(table)), np.log(table[::-1])  # A1111's loglinear_interp
        return {"sigmas": [*np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].tolist(), 0.0]}
    raise InputError(f"schedule type {kind!r} has no explicit schedule")


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
    ("trailing" for SGM Uniform) and `sigma_schedule` (the others but Automatic and Uniform; none where the
    scheduler's name already says Karras). `InputError` naming an unknown type."""
    kind = _schedule_kind(schedule)
    sigmas = kind if kind in SIGMA_SCHEDULES and not (scheduler or "").endswith("_karras") else None
    return {"timestep_spacing": "trailing" if kind == "sgm_uniform" else None, "sigma_schedule": sigmas}


def _schedule_kind(schedule: str | None) -> str:
    kind = (schedule or "automatic").strip().lower().replace(" ", "_")
    kind = {"sgmuniform": "sgm_uniform"}.get(kind, kind)  # A1111's alias
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
