"""The img2img tab: an image to start from (sent from a result, or uploaded), and inpainting with a mask
drawn on it or uploaded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr
import numpy as np
import PIL.Image

from sdlab.sampling.params import DEFAULT_STRENGTH
from sdlab.service.worker import Worker
from sdlab.ui.fields import ModelSettings, request_from, sampling_fields
from sdlab.ui.results import OutputFolder, result_area, watch
from sdlab.ui.txt2img import wire_generation


def build(worker: Worker, models: list[str], settings: ModelSettings, files: OutputFolder) -> dict[str, Any]:
    """The tab's components (`init`: the image editor; `out`: the result area); events wired."""
    with gr.Row():
        init = gr.ImageMask(
            label="Image (draw on it to inpaint that area)", type="pil", elem_id="i2i-image",
            image_mode="RGBA", sources=["upload", "clipboard"], canvas_size=(512, 512),
            # a see-through brush, 3 px in the image's own pixels (resizable in the page)
            brush=gr.Brush(default_size=3, colors=[("#ff3366", 0.6)], color_mode="fixed"),
        )  # fmt: skip
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
