"""The X/Y plot tab: one request varied over two settings, as a labelled grid with, on the digits model,
the judges' verdict per cell, the worse of `sdlab eval`'s judges (`sdlab.lab.xyplot`)."""

from __future__ import annotations

from typing import Any

import gradio as gr
import PIL.Image

from sdlab.errors import InputError
from sdlab.lab.xyplot import AXES, parse_values, xy_grid
from sdlab.service.worker import QueueFull, Worker
from sdlab.ui.fields import ModelSettings, follow_model, request_from, sampling_fields
from sdlab.ui.results import OutputFolder


def build(worker: Worker, models: list[str], settings: ModelSettings, files: OutputFolder) -> dict[str, Any]:
    f = sampling_fields("xy", models, worker.registry.current, settings, batch=False)
    with gr.Row():
        per_cell = gr.Slider(1, 16, value=4, step=1, label="Images per cell", elem_id="xy-per-cell")
        x_axis = gr.Dropdown(list(AXES), value="CFG scale", label="X axis", elem_id="xy-x-axis")
        x_values = gr.Textbox("1, 1.5, 4", label="X values", elem_id="xy-x-values")
        y_axis = gr.Dropdown(list(AXES), value="Steps", label="Y axis", elem_id="xy-y-axis")
        y_values = gr.Textbox("5, 20", label="Y values", elem_id="xy-y-values")
    init = gr.Image(label="Init image (only for the denoising strength axis)", type="pil", elem_id="xy-init",
                    height=160)  # fmt: skip
    run_button = gr.Button("Plot", variant="primary", elem_id="xy-run")
    grid = gr.Image(label="Grid", type="filepath", format="png", elem_id="xy-grid")
    table = gr.Markdown(elem_id="xy-table")
    download = gr.File(label="Download the grid (PNG)", elem_id="xy-file")

    def run(count: int, image: PIL.Image.Image | None, xa: str, xv: str, ya: str, yv: str, *values: Any):
        base = request_from(values).replace(num_images_per_prompt=int(count), init_image=image)
        try:
            xs, ys = parse_values(xa, xv), parse_values(ya, yv)
            worker.limits.check(base.replace(batch_count=len(xs) * len(ys)))  # every cell at the base's cost
            plot = worker.run(lambda w: xy_grid(w.registry, base, xa, xs, ya, ys))
        except (InputError, QueueFull) as err:
            raise gr.Error(worker.registry.public(str(err))) from None
        path = files.save(plot.grid, "xy")
        return path, accuracy_table(plot), path

    run_button.click(run, inputs=[per_cell, init, x_axis, x_values, y_axis, y_values, *f["inputs"]],
                     outputs=[grid, table, download])  # fmt: skip
    follow_model(f, worker)
    return f


def accuracy_table(plot) -> str:
    """The share of each cell's digits read as the prompted digit, as a markdown table ("" off digits)."""
    if plot.accuracy is None:
        return ""
    x = [str(v) for v in plot.x_values]
    rows = ["| | " + " | ".join(x) + " |", "|---" * (len(x) + 1) + "|"]
    for y, row in zip(plot.y_values, plot.accuracy, strict=True):
        cells = " | ".join("—" if a is None else f"{a:.0%}" for a in row)
        rows.append(f"| {'' if y is None else y} | {cells} |")
    return (
        "Share of each cell's digits read as the prompted digit (the stricter of the two judges):\n\n"
        + "\n".join(rows)
    )
