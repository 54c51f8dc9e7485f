"""The img2img tab: an image to start from (sent from a result, or uploaded), and inpainting with a mask
drawn on it or uploaded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr
import numpy as np
import PIL.Image
from gradio.components.base import server

from sdlab.errors import InputError
from sdlab.images import check_image
from sdlab.sampling.params import DEFAULT_STRENGTH
from sdlab.service.worker import Worker
from sdlab.ui.fields import ModelSettings, request_from, sampling_fields
from sdlab.ui.results import OutputFolder, result_area, watch
from sdlab.ui.txt2img import wire_generation

MAX_LAYERS = 8  # image-editor layers a page may upload (sdlab's brush draws on one)
MAX_EDITOR_UPLOADS = 32  # editor uploads kept until their event reads them; the oldest go first


def bound_uploads(editor: gr.ImageMask) -> gr.ImageMask:
    """`editor` with its uploads bounded: `accept_blobs` (the `component_server` route that takes each layer)
    checks the layer index and the image's size from its header with sdlab's safe loader, as the API's images
    are checked, and at most `MAX_EDITOR_UPLOADS` uploads wait for their event. (An instance method, not a
    subclass: gradio writes a `.pyi` file beside the module of every component class.)"""
    accept = editor.accept_blobs

    @server
    def accept_blobs(data: Any) -> None:
        index = data.data.get("index") if isinstance(data.data, dict) else getattr(data.data, "index", None)
        if index not in (None, "", "null") and not (str(index).isdigit() and int(index) < MAX_LAYERS):
            raise gr.Error(f"an image-editor layer index must be below {MAX_LAYERS}, got {index!r}")
        for _, blob in data.files:
            try:
                check_image(blob, what="the uploaded layer")
            except InputError as err:
                raise gr.Error(str(err)) from None
        accept(data)
        while len(editor.blob_storage) > MAX_EDITOR_UPLOADS:
            editor.blob_storage.pop(next(iter(editor.blob_storage)))

    editor.accept_blobs = accept_blobs
    return editor


def build(worker: Worker, models: list[str], settings: ModelSettings, files: OutputFolder) -> dict[str, Any]:
    """The tab's components (`init`: the image editor; `out`: the result area); events wired."""
    with gr.Row():
        init = bound_uploads(gr.ImageMask(
            label="Image (draw on it to inpaint that area)", type="pil", elem_id="i2i-image",
            image_mode="RGBA", sources=["upload", "clipboard"], canvas_size=(512, 512),
            # a see-through brush, 3 px in the image's own pixels (resizable in the page)
            brush=gr.Brush(default_size=3, colors=[("#ff3366", 0.6)], color_mode="fixed"),
        ))  # fmt: skip
        mask_upload = gr.Image(
            label="Mask (optional upload: white = repaint)", type="pil", elem_id="i2i-mask"
        )
    with gr.Row():
        strength = gr.Slider(
            0.01, 1.0, value=DEFAULT_STRENGTH, step=0.01, label="Denoising strength", elem_id="i2i-strength"
        )
        inpaint = gr.Checkbox(False, label="Inpaint the drawn (or uploaded) mask", elem_id="i2i-inpaint")
        mask_blur = gr.Slider(0, 64, value=0, step=1, label="Mask blur (px)")
        invert = gr.Checkbox(False, label="Repaint the unmasked part instead")
    f = sampling_fields("i2i", models, worker.registry.current, settings)
    f["init"], f["out"] = init, result_area("i2i")

    def run(image: dict | None, mask: PIL.Image.Image | None, strength_value: float, use_mask: bool,
            blur: float, inverted: bool, *values: Any) -> Iterator[tuple]:  # fmt: skip
        init_image, drawn = editor_image(image)
        if init_image is None:
            raise gr.Error("give an image to start from (upload one, or send a result here)")
        fields: dict[str, Any] = {"init_image": init_image, "strength": strength_value}
        if use_mask:
            chosen = mask.convert("L") if mask is not None else drawn
            if chosen is None:
                raise gr.Error("draw on the image (or upload a mask) to say what to inpaint")
            fields.update(mask_image=chosen.resize(init_image.size), mask_blur=blur, invert_mask=inverted)
        yield from watch(worker, request_from(values).replace(**fields), files)

    wire_generation(f, f["out"], run, [init, mask_upload, strength, inpaint, mask_blur, invert], worker)
    return f


def editor_image(value: dict | None) -> tuple[PIL.Image.Image | None, PIL.Image.Image | None]:
    """(the image, the drawn mask or None) from an ImageMask value; strokes are the layers' opaque pixels."""
    if not value or value.get("background") is None:
        return None, None
    background = value["background"].convert("RGB")
    drawn = None
    for layer in value.get("layers") or []:
        alpha = np.asarray(layer.convert("RGBA"))[..., 3] > 0
        drawn = alpha if drawn is None else drawn | alpha
    if drawn is None or not drawn.any():
        return background, None
    return background, PIL.Image.fromarray((drawn * 255).astype(np.uint8), "L").resize(background.size)
