"""The txt2img tab: the shared fields, LoRA and embedding pickers, and the results."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from sdlab.errors import InputError
from sdlab.sampling.hires import BUILT_IN_UPSCALERS, DEFAULT_HIRES_STRENGTH, DEFAULT_UPSCALER
from sdlab.service.worker import Worker
from sdlab.ui.fields import ModelSettings, follow_model, request_from, sampling_fields
from sdlab.ui.results import OutputFolder, result_area, watch


def build(worker: Worker, models: list[str], settings: ModelSettings, files: OutputFolder) -> dict[str, Any]:
    """The tab's components (the fields, `out` the result area); events wired."""
    registry = worker.registry
    f = sampling_fields("t2i", models, registry.current, settings)
    with gr.Row():
        lora = gr.Dropdown(list(registry.loras()), label="LoRA", elem_id="t2i-lora", scale=2)
        add_lora = gr.Button("Add LoRA to prompt", scale=1)
        embedding = gr.Dropdown(list(registry.embeddings()), label="Embedding", scale=2)
        add_embedding = gr.Button("Add embedding to prompt", scale=1)
    hires = hires_fields(list(registry.upscalers()))
    f["out"] = out = result_area("t2i")

    def run(*values: Any) -> Iterator[tuple]:
        enable, upscaler, scale, steps, strength, *shared = values
        request = request_from(tuple(shared))
        if enable:
            request = request.replace(hr_upscaler=upscaler, hr_scale=float(scale), hr_second_pass_steps=int(steps),
                                      hr_denoising_strength=float(strength))  # fmt: skip
            try:
                request.validate()
            except InputError as err:
                raise gr.Error(str(err)) from None
        yield from watch(worker, request, files)

    wire_generation(f, out, run, hires, worker)
    add_lora.click(lambda p, name: f"{p} <lora:{name}:1>".strip() if name else p,
                   inputs=[f["prompt"], lora], outputs=f["prompt"])  # fmt: skip
    add_embedding.click(lambda p, name: f"{p} {name}".strip() if name else p,
                        inputs=[f["prompt"], embedding], outputs=f["prompt"])  # fmt: skip
    return f


def hires_fields(models: list[str]) -> list[Any]:
    """A1111's "Hires. fix" accordion: on/off, upscaler (latent modes, Lanczos, Nearest, the upscaler folder's
    models), scale, second-pass steps (0: the same) and denoising strength, as `HiresParams` takes them."""
    with gr.Accordion("Hires. fix", open=False, elem_id="t2i-hires"):
        with gr.Row():
            enable = gr.Checkbox(
                False, label="Hires. fix: draw, upscale, re-draw the details", elem_id="t2i-hr"
            )
            upscaler = gr.Dropdown([*BUILT_IN_UPSCALERS, *models], value=DEFAULT_UPSCALER, label="Upscaler",
                                   elem_id="t2i-hr-upscaler")  # fmt: skip
        with gr.Row():
            scale = gr.Slider(1, 4, value=2, step=0.05, label="Upscale by", elem_id="t2i-hr-scale")
            steps = gr.Slider(
                0, 150, value=0, step=1, label="Hires steps (0: the same)", elem_id="t2i-hr-steps"
            )
            strength = gr.Slider(0.01, 1, value=DEFAULT_HIRES_STRENGTH, step=0.01, label="Denoising strength",
                                 elem_id="t2i-hr-strength")  # fmt: skip
    return [enable, upscaler, scale, steps, strength]


def wire_generation(f: dict[str, Any], out: dict[str, Any], run: Any, extra: list, worker: Worker) -> None:
    """Generate (with live progress), interrupt, skip, reuse the last seed, and follow the model."""
    f["generate"].click(run, inputs=[*extra, *f["inputs"]], outputs=out["outputs"], concurrency_limit=8)
    f["interrupt"].click(worker.interrupt, queue=False)
    f["skip"].click(worker.skip, queue=False)
    f["reuse"].click(lambda s: s, inputs=out["last_seed"], outputs=f["seed"], queue=False)
    follow_model(f, worker)
