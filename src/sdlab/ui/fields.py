"""The fields every generating tab shares, the model's recommendation they start at, and the request
they make.

Each field is a `GenerationRequest` field under its A1111 label (Steps, CFG scale, Seed, ...). On
page load and on a model change, the sampler, steps, CFG scale and size take the selected model's
recommendation (`SamplingParams.resolve`), so a default Generate is the CLI's `sdlab generate` with no
flags. The model's approximations (guidance interval, deep cache) are left to the recommendation unless
set here: at the model's own sampler, steps and CFG scale they apply, at settings of one's own they
do not, exactly as everywhere else.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import gradio as gr

from sdlab.errors import InputError
from sdlab.outputs import interval_text
from sdlab.sampling.params import MAX_SEED, SamplingParams, parse_guidance_interval, parse_pair
from sdlab.sampling.presets import PRESETS
from sdlab.sampling.schedulers import (
    SCHEDULE_TYPES,
    SCHEDULERS,
    a1111_sampler,
    resolve_sampler,
    schedule_settings,
    scheduler_name_from_config,
)
from sdlab.service import GenerationRequest
from sdlab.service.worker import Worker

SAMPLERS = [
    spec.a1111 for spec in SCHEDULERS.values() if not spec.a1111.endswith(" Karras")
]  # Karras: a schedule
SCHEDULES = list(SCHEDULE_TYPES.values())  # A1111 1.10's "Schedule type"s
# SDXL's micro-conditioning fields (SamplingParams names), as "H,W" or "TOP,LEFT" text; empty: the default
SIZE_FIELDS = ("original_size", "crops_coords_top_left", "target_size", "negative_original_size")
MODELS_OWN = "the model's"  # deep cache and guidance interval: the recommendation's (at its settings)
DEEP_CACHE_CHOICES = [MODELS_OWN, "1 (off)", "2", "3", "4"]
# the order of the values a tab's fields give its event handlers
FIELD_ORDER = ("prompt", "negative", "model", "sampler", "schedule", "steps", "cfg", "width", "height", "seed",
               "batch_count", "batch_size", "interval", "deep_cache", "clip_skip", *SIZE_FIELDS)  # fmt: skip
FOLLOWS_MODEL = ("sampler", "schedule", "steps", "cfg", "width", "height", "recommended", "interval", "deep_cache",
                 "sdxl", *SIZE_FIELDS)  # fmt: skip
PRESET_NONE = "none"


@dataclass(frozen=True)
class ModelSettings:
    """What the fields show for a model: its recommendation, resolved as `generate` resolves it."""

    sampler: str  # A1111's name
    schedule: str  # A1111's schedule type
    steps: int
    cfg: float
    size: int  # pixels, the model's own side
    text: str  # the recommendation in words
    sdxl: bool = False  # the SDXL fields are shown

    @classmethod
    def of(cls, worker: Worker, name: str | None) -> ModelSettings:
        """The settings of model `name` (None: the current one), loaded if need be (the registry's lock, not
        the worker's queue: a page load never waits behind a generation). A model that cannot be loaded
        gives sdlab's fallbacks, with its sentence in `text`."""
        registry = worker.registry
        try:
            pipe = registry.pipeline(registry.find_model(name))
        except InputError as err:
            p = SamplingParams().resolve(SamplingParams(), "pndm")
            return cls(*a1111_sampler(p.scheduler), p.num_inference_steps, p.guidance_scale, 512, f"⚠ {err}")
        p = SamplingParams().resolve(pipe.recommended, scheduler_name_from_config(pipe.scheduler_config))
        return cls.of_params(p, pipe.default_size, describe(p), sdxl=pipe.is_sdxl)

    @classmethod
    def of_params(cls, p: SamplingParams, size: int, text: str, *, sdxl: bool = False) -> ModelSettings:
        sampler, schedule = a1111_sampler(p.scheduler, p.timestep_spacing)
        return cls(
            sampler, schedule or "Automatic", p.num_inference_steps, p.guidance_scale, size, text, sdxl
        )

    def values(self) -> tuple:
        """The `FOLLOWS_MODEL` fields' values: the model's settings, its speed-ups left to it."""
        sizes = ["0,0" if name == "crops_coords_top_left" else "" for name in SIZE_FIELDS]  # SDXL's: cleared
        return (self.sampler, self.schedule, self.steps, self.cfg, self.size, self.size, self.text, "", MODELS_OWN,
                gr.Accordion(visible=self.sdxl), *sizes)  # fmt: skip


def preset_values(name: str) -> tuple:
    """The sampler, schedule type, steps and CFG fields' values for preset `name` (no change for "none")."""
    if name not in PRESETS:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    p = PRESETS[name].params()
    sampler, schedule = a1111_sampler(p.scheduler, p.timestep_spacing, p.sigma_schedule)
    return sampler, schedule or "Automatic", p.num_inference_steps, p.guidance_scale


def describe(p: SamplingParams) -> str:
    """A resolved recommendation in a sentence: "UniPC, 6 steps, CFG 3.0; guided at sigma in (0.0, 1.5], ..."."""
    sampler = ", ".join(filter(None, a1111_sampler(p.scheduler, p.timestep_spacing, p.sigma_schedule)))
    text = f"The model's settings: {sampler}, {p.num_inference_steps} steps, CFG {p.guidance_scale:g}"
    extras = []
    if (interval := interval_text(list(p.guidance_interval))) is not None:
        extras.append(f"guidance only at noise levels σ in ({interval.replace(' to ', ', ')}]")
    if p.deep_cache > 1:
        extras.append(f"deep cache every {p.deep_cache} steps")
    if extras:
        text += f"; at these settings also {' and '.join(extras)} (tuned for them: changing the sampler, steps or CFG drops them)"
    return text + "."


def sampling_fields(prefix: str, models: list[str], current: str, settings: ModelSettings, *,
                    batch: bool = True) -> dict[str, Any]:  # fmt: skip
    """The shared fields, with elem_ids `PREFIX-NAME` for tests and scripts; `f["inputs"]` in `FIELD_ORDER`."""
    f: dict[str, Any] = {}
    with gr.Row():
        f["prompt"] = gr.Textbox(
            label="Prompt", lines=2, scale=4, elem_id=f"{prefix}-prompt", value="a handwritten digit 7"
        )
        f["negative"] = gr.Textbox(label="Negative prompt", lines=2, scale=3, elem_id=f"{prefix}-negative")
    with gr.Row():
        f["model"] = gr.Dropdown(models, value=current, label="Model", elem_id=f"{prefix}-model")
        f["sampler"] = gr.Dropdown(
            SAMPLERS, value=settings.sampler, label="Sampler", elem_id=f"{prefix}-sampler"
        )
        f["schedule"] = gr.Dropdown(
            SCHEDULES, value=settings.schedule, label="Schedule type", elem_id=f"{prefix}-schedule"
        )
        f["steps"] = gr.Slider(1, 150, value=settings.steps, step=1, label="Steps", elem_id=f"{prefix}-steps")
        f["cfg"] = gr.Slider(0, 30, value=settings.cfg, step=0.5, label="CFG scale", elem_id=f"{prefix}-cfg")
    with gr.Row():
        f["width"] = gr.Slider(8, 2048, value=settings.size, step=8, label="Width", elem_id=f"{prefix}-width")
        f["height"] = gr.Slider(
            8, 2048, value=settings.size, step=8, label="Height", elem_id=f"{prefix}-height"
        )
        f["seed"] = gr.Number(-1, precision=0, label="Seed (-1: random)", elem_id=f"{prefix}-seed")
        f["random"] = gr.Button("Random seed", size="sm", elem_id=f"{prefix}-random")
        f["reuse"] = gr.Button("Reuse last seed", size="sm", elem_id=f"{prefix}-reuse", visible=batch)
    with gr.Row(visible=batch):
        f["batch_count"] = gr.Slider(
            1, 100, value=1, step=1, label="Batch count", elem_id=f"{prefix}-batch-count"
        )
        f["batch_size"] = gr.Slider(
            1, 64, value=1, step=1, label="Batch size", elem_id=f"{prefix}-batch-size"
        )
    f["recommended"] = gr.Markdown(settings.text, elem_id=f"{prefix}-recommended")
    with (
        gr.Accordion("Conditioning and few-step presets", open=False, elem_id=f"{prefix}-conditioning"),
        gr.Row(),
    ):
        f["preset"] = gr.Dropdown(
            [PRESET_NONE, *PRESETS], value=PRESET_NONE, elem_id=f"{prefix}-preset",
            label="Preset: a few-step model's card settings (SDXL-Turbo, Lightning, Hyper-SD, LCM-LoRA)",
        )  # fmt: skip
        f["clip_skip"] = gr.Slider(
            1,
            12,
            value=1,
            step=1,
            label="Clip skip (A1111's: 1 reads the last layer)",
            elem_id=f"{prefix}-clip-skip",
        )
    sdxl = gr.Accordion("SDXL size conditioning", open=False, visible=settings.sdxl, elem_id=f"{prefix}-sdxl")
    with sdxl as f["sdxl"], gr.Row():
        labels = {"original_size": "Original size (H,W; empty: the output size)",
                  "crops_coords_top_left": "Crop top-left (TOP,LEFT)", "target_size": "Target size (H,W; empty: the output size)",
                  "negative_original_size": "Negative original size (H,W; empty: as the original size)"}  # fmt: skip
        for name in SIZE_FIELDS:
            default = "0,0" if name == "crops_coords_top_left" else ""
            f[name] = gr.Textbox(default, label=labels[name], elem_id=f"{prefix}-{name.replace('_', '-')}")
    with gr.Accordion("Speed-ups", open=False), gr.Row():
        f["interval"] = gr.Textbox(
            "",
            label="Guidance interval (LO,HI in σ; 'all'; empty: the model's)",
            elem_id=f"{prefix}-interval",
        )
        f["deep_cache"] = gr.Dropdown(
            DEEP_CACHE_CHOICES, value=MODELS_OWN, label="Deep cache (run the UNet whole every N steps)",
            elem_id=f"{prefix}-deep-cache", allow_custom_value=True,
        )  # fmt: skip
    if batch:
        with gr.Row():
            f["generate"] = gr.Button("Generate", variant="primary", elem_id=f"{prefix}-generate")
            f["interrupt"] = gr.Button("Interrupt", elem_id=f"{prefix}-interrupt")
            f["skip"] = gr.Button("Skip", elem_id=f"{prefix}-skip")
    f["inputs"] = [f[name] for name in FIELD_ORDER]
    f["follows_model"] = [f[name] for name in FOLLOWS_MODEL]
    return f


def follow_model(f: dict[str, Any], worker: Worker) -> None:
    """A model change sets the fields to that model's recommendation; so does a new page (the current
    model may have changed since the page was built, through `/options`)."""
    f["model"].change(lambda name: ModelSettings.of(worker, name).values(), inputs=f["model"],
                      outputs=f["follows_model"])  # fmt: skip
    f["random"].click(lambda: -1, outputs=f["seed"], queue=False)
    f["preset"].change(
        preset_values, inputs=f["preset"], outputs=[f[k] for k in ("sampler", "schedule", "steps", "cfg")]
    )


def request_from(values: tuple) -> GenerationRequest:
    """The request a tab's fields (in `FIELD_ORDER`) make; `gr.Error` with one sentence for a bad one."""
    named = dict(zip(FIELD_ORDER, values, strict=True))
    seed = int(named["seed"]) if named["seed"] is not None else -1
    cache = str(named["deep_cache"] or MODELS_OWN).strip()
    try:
        if cache != MODELS_OWN and not cache.split(" ")[0].isdigit():
            raise InputError(
                f"deep cache must be {MODELS_OWN!r} or a whole number of steps (1: off), got {cache!r}"
            )
        sizes = {name: parse_pair(named[name], name) for name in SIZE_FIELDS if (named[name] or "").strip()}
        scheduler = resolve_sampler(named["sampler"], named["schedule"]) if named["sampler"] else None
        return GenerationRequest(
            prompt=named["prompt"] or "",
            negative_prompt=named["negative"] or None,
            model=named["model"],
            scheduler=scheduler,
            **schedule_settings(named["schedule"], scheduler),
            clip_skip=int(named["clip_skip"] or 1) - 1,
            **sizes,
            num_inference_steps=int(named["steps"]),
            guidance_scale=float(named["cfg"]),
            guidance_interval=parse_guidance_interval(named["interval"].strip() or None),
            deep_cache=None if cache == MODELS_OWN else int(cache.split()[0]),
            width=int(named["width"]),
            height=int(named["height"]),
            seed=random.SystemRandom().randrange(MAX_SEED // 2) if seed < 0 else seed,
            batch_count=int(named["batch_count"]),
            num_images_per_prompt=int(named["batch_size"]),
        ).validate()
    except InputError as err:
        raise gr.Error(str(err)) from None
