"""The web UI: a gradio `Blocks` app over the request layer, mounted at `/` beside the API.

One module per tab (txt2img, img2img with inpainting, PNG info, X/Y plot, the Lab) over the shared
fields of `ui.fields` and the result area of `ui.results`. Every action builds a `GenerationRequest`
(or a lab function) and hands it to the same `Worker` the HTTP API uses; nothing here touches a model.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import gradio as gr  # noqa: E402

from sdlab.service.worker import Worker  # noqa: E402
from sdlab.ui import img2img, lab, pnginfo, txt2img, xyplot  # noqa: E402
from sdlab.ui.fields import ModelSettings  # noqa: E402
from sdlab.ui.results import CSS, OutputFolder, image_at  # noqa: E402

__all__ = ["CSS", "THEME", "build_ui"]
# system fonts only: the default theme would load its fonts from a CDN
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
)
# gradio's own copies of the files it serves: removed after an hour, checked every ten minutes
DELETE_CACHE = (600, 3600)


def build_ui(worker: Worker) -> gr.Blocks:
    """The Blocks app; every event goes through `worker` (the same one the HTTP API uses)."""
    models = [entry.name for entry in worker.registry.models()]
    settings = ModelSettings.of(worker, None)  # the current model's recommendation: every tab starts there
    files = OutputFolder()
    with gr.Blocks(title="sdlab", analytics_enabled=False, delete_cache=DELETE_CACHE) as ui:
        gr.Markdown("## sdlab — Stable Diffusion you can see into")
        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img"):
                t2i = txt2img.build(worker, models, settings, files)
            with gr.Tab("img2img", id="img2img"):
                i2i = img2img.build(worker, models, settings, files)
            with gr.Tab("PNG info", id="pnginfo"):
                png = pnginfo.build()
            with gr.Tab("X/Y plot", id="xyplot"):
                xy = xyplot.build(worker, models, settings, files)
            with gr.Tab("Lab", id="lab"):
                watch = lab.build(worker, models, settings)
        for tab in (t2i, i2i):  # "send to img2img": the selected result, kept on the server
            tab["out"]["send"].click(lambda images, index: (image_at(images, index), gr.Tabs(selected="img2img")),
                                     inputs=[tab["out"]["images"], tab["out"]["selected"]],
                                     outputs=[i2i["init"], tabs])  # fmt: skip
        pnginfo.wire_send(png, t2i, tabs)
        # a new page starts at the current model (it may have changed through /options) and its settings
        tabbed = (t2i, i2i, xy, watch)
        ui.load(lambda: _current(worker, len(tabbed)),
                outputs=[c for f in tabbed for c in (f["model"], *f["follows_model"])])  # fmt: skip
    return ui


def _current(worker: Worker, tabs: int) -> tuple:
    name = worker.registry.current
    return (name, *ModelSettings.of(worker, name).values()) * tabs
