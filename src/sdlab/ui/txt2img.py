"""The txt2img tab: the shared fields, LoRA and embedding pickers, and the results."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

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
    f["out"] = out = result_area("t2i")

    def run(*values: Any) -> Iterator[tuple]:
        yield from watch(worker, request_from(values), files)

    wire_generation(f, out, run, [], worker)
    add_lora.click(lambda p, name: f"{p} <lora:{name}:1>".strip() if name else p,
                   inputs=[f["prompt"], lora], outputs=f["prompt"])  # fmt: skip
    add_embedding.click(lambda p, name: f"{p} {name}".strip() if name else p,
                        inputs=[f["prompt"], embedding], outputs=f["prompt"])  # fmt: skip
    return f


def wire_generation(f: dict[str, Any], out: dict[str, Any], run: Any, extra: list, worker: Worker) -> None:
    """Generate (with live progress), interrupt, skip, reuse the last seed, and follow the model."""
    f["generate"].click(run, inputs=[*extra, *f["inputs"]], outputs=out["outputs"], concurrency_limit=8)
    f["interrupt"].click(worker.interrupt, queue=False)
    f["skip"].click(worker.skip, queue=False)
    f["reuse"].click(lambda s: s, inputs=out["last_seed"], outputs=f["seed"], queue=False)
    follow_model(f, worker)
