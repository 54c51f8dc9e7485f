"""The PNG info tab: the generation parameters stored in a PNG (sdlab's or A1111's), and "send to
txt2img", which sets every field the parameters name (A1111's infotext pasting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from sdlab.errors import InputError
from sdlab.images import read_image_text
from sdlab.metadata import format_parameters, parse_parameters
from sdlab.outputs import interval_text, parameters_recipe, unapplied
from sdlab.sampling.schedulers import a1111_sampler
from sdlab.ui.fields import DEEP_CACHE_CHOICES, SIZE_FIELDS

SENT = ("prompt", "negative", "sampler", "schedule", "steps", "cfg", "seed", "width", "height", "interval", "deep_cache",
        "clip_skip", *SIZE_FIELDS)  # fmt: skip


def build() -> dict[str, Any]:
    """The tab's components: `file`, `text` (the parameters), `send`."""
    c = {
        "file": gr.File(
            label="Drop a PNG, JPEG or WebP (sdlab's, or AUTOMATIC1111's)",
            file_types=[".png", ".jpg", ".jpeg", ".webp"],
            elem_id="png-file",
        ),
        "text": gr.Textbox(label="parameters", lines=6, elem_id="png-parameters", buttons=["copy"]),
        "send": gr.Button("Send to txt2img", elem_id="png-send"),
    }
    c["file"].upload(png_parameters, inputs=c["file"], outputs=c["text"])
    return c


def wire_send(c: dict[str, Any], t2i: dict[str, Any], tabs: gr.Tabs) -> None:
    """ "Send to txt2img": the parameters into txt2img's fields, then that tab."""
    c["send"].click(parameters_to_fields, inputs=c["text"], outputs=[*(t2i[k] for k in SENT), tabs])


def png_parameters(file: Any) -> str:
    if file is None:
        return ""
    path = file if isinstance(file, str) else getattr(file, "name", "")
    try:  # the bytes, not the path: gradio has checked the file is an upload; messages name no server path
        return read_image_text(Path(path).read_bytes(), what="the image").get(
            "parameters", "this image carries no generation parameters"
        )
    except InputError as err:
        raise gr.Error(str(err)) from None


def parameters_to_fields(text: str) -> tuple:
    """A1111 infotext -> txt2img's fields (`SENT`, then the tab). A setting the text leaves out is off, as
    A1111 means it; a sampler sdlab does not have leaves the sampler field as it is."""
    if not text.strip():
        raise gr.Error("drop a PNG with generation parameters first")
    prompt, negative, settings = parse_parameters(text)
    for sentence in unapplied(settings):  # sent without it: said, not silently dropped
        gr.Warning(f"{sentence}, which sdlab does not apply; the other fields are sent")
    sampler: Any = gr.skip()
    schedule: Any = gr.skip()
    for dropped in ((), ("Schedule type",), ("Schedule type", "Sampler")):
        kept = {k: v for k, v in settings.items() if k not in dropped}
        try:
            r = parameters_recipe(format_parameters(prompt, negative, kept), "the parameters")
        except InputError as err:
            if "sampler" in str(err) or "schedule" in str(err):
                continue  # old A1111's and others' samplers: try the sampler alone, then none
            raise gr.Error(str(err)) from None
        if "Sampler" in kept:
            sampler, schedule = a1111_sampler(
                r["scheduler"], r.get("timestep_spacing"), r.get("sigma_schedule")
            )
            schedule = schedule or "Automatic"
        break
    interval = interval_text(r["guidance_interval"])
    cache = r["deep_cache"]
    sizes = [",".join(map(str, r[name])) if r.get(name) is not None else "" for name in SIZE_FIELDS]
    return (
        r["prompt"], r["negative_prompt"], sampler, schedule, r["num_inference_steps"], r["guidance_scale"],
        r["seed"], r["width"], r["height"], "all" if interval is None else interval.replace(" to ", ","),
        DEEP_CACHE_CHOICES[1] if cache == 1 else str(cache), r.get("clip_skip", 0) + 1, *sizes,
        gr.Tabs(selected="txt2img"),
    )  # fmt: skip
