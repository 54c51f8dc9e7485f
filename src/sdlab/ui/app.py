"""The web UI: a gradio `Blocks` app over the request layer, mounted at `/` beside the API.

Tabs: txt2img, img2img (with inpainting: draw the mask on the image, or upload one), PNG info,
X/Y plot, and the Lab. Every action builds a `GenerationRequest` (or a lab function) and hands it to
the same `Worker` the HTTP API uses; nothing here touches a model. Results are PNG files with their
`parameters` and `sdlab` chunks, so a downloaded image is the CLI's image with its recipe.
"""

from __future__ import annotations

import itertools
import os
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402

from sdlab.errors import InputError  # noqa: E402
from sdlab.lab.xyplot import AXES, parse_values, xy_grid  # noqa: E402
from sdlab.metadata import parse_parameters  # noqa: E402
from sdlab.sampling.params import MAX_SEED  # noqa: E402
from sdlab.sampling.schedulers import SCHEDULERS, resolve_sampler  # noqa: E402
from sdlab.service import GeneratedImage, GenerationRequest, RequestResult  # noqa: E402
from sdlab.service.worker import QueueFull, Worker  # noqa: E402

MODEL_DEFAULT = "model's default"
SAMPLERS = [MODEL_DEFAULT, *(spec.a1111 for spec in SCHEDULERS.values())]
# system fonts only: the default theme would load its fonts from a CDN
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
)
CSS = ".sdlab-progress progress { width: 100%; }"


def build_ui(worker: Worker) -> gr.Blocks:
    """The Blocks app; every event goes through `worker` (the same one the HTTP API uses)."""
    registry = worker.registry
    outputs_dir = Path(tempfile.mkdtemp(prefix="sdlab-ui-"))
    models = [entry.name for entry in registry.models()]

    with gr.Blocks(title="sdlab", analytics_enabled=False) as ui:
        gr.Markdown("## sdlab — Stable Diffusion you can see into")
        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img"):
                t2i = _generation_fields("t2i", models, registry.current)
                with gr.Row():
                    lora = gr.Dropdown(list(registry.loras()), label="LoRA", elem_id="t2i-lora", scale=2)
                    add_lora = gr.Button("Add LoRA to prompt", scale=1)
                    embedding = gr.Dropdown(list(registry.embeddings()), label="Embedding", scale=2)
                    add_embedding = gr.Button("Add embedding to prompt", scale=1)
                t2i_out = _result_area("t2i")
            with gr.Tab("img2img", id="img2img"):
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
                        0.01, 1.0, value=0.6, step=0.01, label="Denoising strength", elem_id="i2i-strength"
                    )
                    inpaint = gr.Checkbox(
                        False, label="Inpaint the drawn (or uploaded) mask", elem_id="i2i-inpaint"
                    )
                    mask_blur = gr.Slider(0, 64, value=0, step=1, label="Mask blur (px)")
                    invert = gr.Checkbox(False, label="Repaint the unmasked part instead")
                i2i = _generation_fields("i2i", models, registry.current)
                i2i_out = _result_area("i2i")
            with gr.Tab("PNG info", id="pnginfo"):
                png_file = gr.File(
                    label="Drop a PNG (sdlab's, or AUTOMATIC1111's)", file_types=[".png"], elem_id="png-file"
                )
                png_text = gr.Textbox(label="parameters", lines=6, elem_id="png-parameters", buttons=["copy"])
                to_txt2img = gr.Button("Send to txt2img", elem_id="png-send")
            with gr.Tab("X/Y plot", id="xyplot"):
                xy = _generation_fields("xy", models, registry.current, batch=False)
                with gr.Row():
                    per_cell = gr.Slider(
                        1, 16, value=4, step=1, label="Images per cell", elem_id="xy-per-cell"
                    )
                    x_axis = gr.Dropdown(list(AXES), value="CFG scale", label="X axis", elem_id="xy-x-axis")
                    x_values = gr.Textbox("1, 1.5, 4", label="X values", elem_id="xy-x-values")
                    y_axis = gr.Dropdown(list(AXES), value="Steps", label="Y axis", elem_id="xy-y-axis")
                    y_values = gr.Textbox("5, 20", label="Y values", elem_id="xy-y-values")
                xy_init = gr.Image(
                    label="Init image (only for the denoising strength axis)",
                    type="pil",
                    elem_id="xy-init",
                    height=160,
                )
                xy_run = gr.Button("Plot", variant="primary", elem_id="xy-run")
                xy_grid_image = gr.Image(label="Grid", type="filepath", format="png", elem_id="xy-grid")
                xy_table = gr.Markdown(elem_id="xy-table")
                xy_file = gr.File(label="Download the grid (PNG)", elem_id="xy-file")
            with gr.Tab("Lab", id="lab"):
                gr.Markdown(
                    "One generation taken apart. **Latents** are x_t after each step; **x̂₀** is the clean image "
                    "the UNet predicts at that step. At the chosen step, the **unconditional**, **conditional** and "
                    "**guided** predictions show classifier-free guidance at work. With a guide digit, the plot "
                    "follows the guiding classifier's probability of that digit. **Attention** maps where each "
                    "prompt word lands (cross-attention averaged over heads, layers and steps; DAAM)."
                )
                lab = _generation_fields("lab", models, registry.current, batch=False)
                with gr.Row():
                    guide_digit = gr.Dropdown(
                        ["none", *map(str, range(10))], value="none", label="Guide digit (gradient guidance)",
                        elem_id="lab-guide",
                    )  # fmt: skip
                    split_step = gr.Slider(
                        1, 150, value=10, step=1, label="Step for the guidance split", elem_id="lab-split"
                    )
                lab_run = gr.Button("Watch", variant="primary", elem_id="lab-run")
                strip = dict(format="png", height=170, object_fit="contain", preview=False)
                lab_latents = gr.Gallery(
                    label="Latents x_t, step by step", columns=10, elem_id="lab-latents", **strip
                )
                lab_x0 = gr.Gallery(
                    label="Predicted clean image x̂₀, step by step", columns=10, elem_id="lab-x0", **strip
                )
                with gr.Row():
                    lab_split = gr.Gallery(
                        label="Guidance at one step", columns=3, elem_id="lab-split-images", **strip
                    )
                    lab_plot = gr.Plot(label="Guiding classifier: p(digit) per step", elem_id="lab-plot")
                lab_attention = gr.Gallery(
                    label="Attention per word", columns=8, elem_id="lab-attention", **strip
                )

        # -- txt2img and img2img: generate with live progress, interrupt, skip
        def run_t2i(*values: Any) -> Iterator[tuple]:
            yield from _run_and_watch(worker, _request("t2i", values), outputs_dir)

        def run_i2i(image: dict | None, mask: PIL.Image.Image | None, strength_value: float, use_mask: bool,
                    blur: float, inverted: bool, *values: Any) -> Iterator[tuple]:  # fmt: skip
            base = _request("i2i", values)
            init_image, drawn = _editor_image(image)
            if init_image is None:
                raise gr.Error("give an image to start from (upload one, or send a result here)")
            fields: dict[str, Any] = {"init_image": init_image, "strength": strength_value}
            if use_mask:
                chosen = mask.convert("L") if mask is not None else drawn
                if chosen is None:
                    raise gr.Error("draw on the image (or upload a mask) to say what to inpaint")
                fields.update(mask_image=chosen.resize(init_image.size), mask_blur=blur, invert_mask=inverted)
            yield from _run_and_watch(worker, base.replace(**fields), outputs_dir)

        i2i_extra = [init, mask_upload, strength, inpaint, mask_blur, invert]
        for fields, run, extra, out in ((t2i, run_t2i, [], t2i_out), (i2i, run_i2i, i2i_extra, i2i_out)):
            fields["generate"].click(
                run, inputs=[*extra, *fields["inputs"]],
                outputs=[out["progress"], out["preview"], out["gallery"], out["files"], out["info"], out["last_seed"], out["infos"], out["images"]],
                concurrency_limit=8,
            )  # fmt: skip
            fields["interrupt"].click(worker.interrupt, queue=False)
            fields["skip"].click(worker.skip, queue=False)
            fields["reuse"].click(lambda s: s, inputs=out["last_seed"], outputs=fields["seed"], queue=False)
            out["gallery"].select(_selected_info, inputs=out["infos"], outputs=[out["info"], out["selected"]])

        add_lora.click(
            lambda p, name: f"{p} <lora:{name}:1>".strip() if name else p,
            inputs=[t2i["prompt"], lora],
            outputs=t2i["prompt"],
        )
        add_embedding.click(
            lambda p, name: f"{p} {name}".strip() if name else p,
            inputs=[t2i["prompt"], embedding],
            outputs=t2i["prompt"],
        )
        for out in (t2i_out, i2i_out):
            out["send"].click(
                lambda images, index: (_image_at(images, index), gr.Tabs(selected="img2img")),
                inputs=[out["images"], out["selected"]], outputs=[init, tabs],
            )  # fmt: skip

        # -- PNG info
        png_file.upload(_png_parameters, inputs=png_file, outputs=png_text)
        to_txt2img.click(
            _parameters_to_fields, inputs=png_text,
            outputs=[t2i["prompt"], t2i["negative"], t2i["sampler"], t2i["steps"], t2i["cfg"], t2i["seed"], t2i["width"], t2i["height"], tabs],
        )  # fmt: skip

        # -- X/Y plot and the lab
        def run_xy(
            count: int, image: PIL.Image.Image | None, xa: str, xv: str, ya: str, yv: str, *values: Any
        ):
            base = _request("xy", values).replace(num_images_per_prompt=int(count), init_image=image)
            try:
                xs, ys = parse_values(xa, xv), parse_values(ya, yv)
                plot = worker.run(lambda w: xy_grid(w.registry, base, xa, xs, ya, ys))
            except (InputError, QueueFull) as err:
                raise gr.Error(str(err)) from None
            path = outputs_dir / f"xy-{time.time_ns()}.png"
            plot.grid.save(path)
            return str(path), _accuracy_table(plot), str(path)

        xy_run.click(
            run_xy,
            inputs=[per_cell, xy_init, x_axis, x_values, y_axis, y_values, *xy["inputs"]],
            outputs=[xy_grid_image, xy_table, xy_file],
        )

        def run_lab(digit: str, step: int, *values: Any):
            from sdlab.lab.steps import watch

            request = _request("lab", values)
            if digit != "none":
                request = request.replace(guide_digit=int(digit))
            try:
                seen = worker.run(lambda w: watch(w.registry, request, split_step=int(step), attention=True))
            except (InputError, QueueFull) as err:
                raise gr.Error(str(err)) from None
            latents = [(f.latents, f"step {f.step}{' (guided)' if f.guided else ''}") for f in seen.frames]
            x0 = [(f.x0, f"step {f.step}{' (guided)' if f.guided else ''}") for f in seen.frames]
            split = []
            if seen.split is not None:
                s = seen.split
                split = [
                    (s.unconditional, f"unconditional, step {s.step}"),
                    (s.conditional, "conditional"),
                    (s.guided, "guided"),
                ]
            plot = (
                _probability_plot(seen.digit_probability, request.guide_digit)
                if seen.digit_probability
                else None
            )
            attention = [(w.overlay, w.word) for w in seen.attention]
            return latents, x0, split, plot, attention

        lab_run.click(
            run_lab,
            inputs=[guide_digit, split_step, *lab["inputs"]],
            outputs=[lab_latents, lab_x0, lab_split, lab_plot, lab_attention],
        )
        for fields in (t2i, i2i, xy, lab):
            fields["random"].click(lambda: -1, outputs=fields["seed"], queue=False)
            fields["model"].change(
                _model_defaults(worker),
                inputs=fields["model"],
                outputs=[fields["steps"], fields["cfg"], fields["width"], fields["height"]],
            )
    return ui


FIELD_ORDER = (
    "prompt",
    "negative",
    "model",
    "sampler",
    "steps",
    "cfg",
    "width",
    "height",
    "seed",
    "batch_count",
    "batch_size",
)


def _generation_fields(prefix: str, models: list[str], current: str, *, batch: bool = True) -> dict[str, Any]:
    """The fields every generating tab shares, with elem_ids `PREFIX-NAME` for tests and scripts."""
    f: dict[str, Any] = {}
    with gr.Row():
        f["prompt"] = gr.Textbox(
            label="Prompt", lines=2, scale=4, elem_id=f"{prefix}-prompt", value="a handwritten digit 7"
        )
        f["negative"] = gr.Textbox(label="Negative prompt", lines=2, scale=3, elem_id=f"{prefix}-negative")
    with gr.Row():
        f["model"] = gr.Dropdown(models, value=current, label="Model", elem_id=f"{prefix}-model")
        f["sampler"] = gr.Dropdown(
            SAMPLERS, value=MODEL_DEFAULT, label="Sampler", elem_id=f"{prefix}-sampler"
        )
        f["steps"] = gr.Slider(1, 150, value=30, step=1, label="Steps", elem_id=f"{prefix}-steps")
        f["cfg"] = gr.Slider(1, 30, value=1.5, step=0.5, label="CFG scale", elem_id=f"{prefix}-cfg")
    with gr.Row():
        f["width"] = gr.Slider(8, 2048, value=32, step=8, label="Width", elem_id=f"{prefix}-width")
        f["height"] = gr.Slider(8, 2048, value=32, step=8, label="Height", elem_id=f"{prefix}-height")
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
    if batch:
        with gr.Row():
            f["generate"] = gr.Button("Generate", variant="primary", elem_id=f"{prefix}-generate")
            f["interrupt"] = gr.Button("Interrupt", elem_id=f"{prefix}-interrupt")
            f["skip"] = gr.Button("Skip", elem_id=f"{prefix}-skip")
    f["inputs"] = [f[name] for name in FIELD_ORDER]
    return f


def _result_area(prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with gr.Row():
        out["progress"] = gr.HTML(elem_id=f"{prefix}-progress", elem_classes=["sdlab-progress"])
        out["preview"] = gr.Image(
            label="Preview",
            type="pil",
            format="png",
            elem_id=f"{prefix}-preview",
            height=160,
            interactive=False,
        )
    out["gallery"] = gr.Gallery(
        label="Results", columns=6, format="png", elem_id=f"{prefix}-gallery", height=240, preview=False,
        object_fit="contain", buttons=["download", "fullscreen"],
    )  # fmt: skip
    out["info"] = gr.Textbox(label="Generation info", lines=3, elem_id=f"{prefix}-info", buttons=["copy"])
    out["files"] = gr.File(
        label="PNG files (with their parameters)", file_count="multiple", elem_id=f"{prefix}-files"
    )
    out["send"] = gr.Button("Send to img2img", elem_id=f"{prefix}-send")
    out["last_seed"] = gr.State(-1)
    out["infos"] = gr.State([])
    out["selected"] = gr.State(0)
    out["images"] = gr.State(
        []
    )  # the results, kept on the server: "send to img2img" takes no path from the page
    return out


def _request(prefix: str, values: tuple) -> GenerationRequest:
    named = dict(zip(FIELD_ORDER, values, strict=True))
    seed = int(named["seed"]) if named["seed"] is not None else -1
    try:
        scheduler = (
            None if named["sampler"] in (None, MODEL_DEFAULT) else resolve_sampler(named["sampler"], None)
        )
    except InputError as err:
        raise gr.Error(str(err)) from None
    return GenerationRequest(
        prompt=named["prompt"] or "",
        negative_prompt=named["negative"] or None,
        model=named["model"],
        scheduler=scheduler,
        num_inference_steps=int(named["steps"]),
        guidance_scale=float(named["cfg"]),
        width=int(named["width"]),
        height=int(named["height"]),
        seed=random.SystemRandom().randrange(MAX_SEED // 2) if seed < 0 else seed,
        batch_count=int(named["batch_count"]),
        num_images_per_prompt=int(named["batch_size"]),
    )


def _run_and_watch(worker: Worker, request: GenerationRequest, outputs_dir: Path) -> Iterator[tuple]:
    """Submit, then report this job's progress (bar, step, ETA, preview) until its result arrives.

    Yields (progress, preview, gallery, files, info, last seed, infos, images) as the outputs are wired.
    """
    try:
        future = worker.submit(request)
    except (InputError, QueueFull) as err:
        raise gr.Error(str(err)) from None
    unchanged = (gr.skip(),) * 6
    while not future.done():
        p = worker.progress()
        if p.job == future.job_id and p.sampling_steps:  # another user's job is never shown
            text = (f"<progress value='{p.fraction:.3f}' max='1'></progress> batch {p.job_no + 1}/{p.job_count}, "
                    f"step {p.sampling_step}/{p.sampling_steps}, ETA {p.eta:.1f} s")  # fmt: skip
            yield text, p.preview_image(), *unchanged
        else:
            yield ("starting…" if p.job == future.job_id else "waiting in the queue…"), gr.skip(), *unchanged
        time.sleep(0.2)
    try:
        result: RequestResult = future.result()
    except InputError as err:
        raise gr.Error(str(err)) from None
    files = [_write(image, outputs_dir) for image in result.images]
    infos = [image.infotext for image in result.images]
    stopped = sum(1 for image in result.images if image.recipe.get("stopped_at_step"))
    status = f"done: {len(files)} images" + (
        f", {stopped} stopped early (interrupted or skipped)" if stopped else ""
    )
    gallery = [
        (path, f"seed {image.recipe['seed']}") for path, image in zip(files, result.images, strict=True)
    ]
    first_seed = result.seeds[0] if result.seeds else -1
    images = [image.image for image in result.images]
    yield status, None, gallery, files, infos[0] if infos else "", first_seed, infos, images


_NUMBERS = itertools.count(1)


def _write(image: GeneratedImage, folder: Path) -> str:
    """NNNNN-SEED.png, numbered as A1111 numbers its outputs; files older than an hour are removed
    (gradio has copied them into its own cache by then)."""
    for old in folder.glob("*.png"):
        if time.time() - old.stat().st_mtime > 3600:
            old.unlink(missing_ok=True)
    path = folder / f"{next(_NUMBERS):05d}-{image.recipe['seed']}.png"
    path.write_bytes(image.png())
    return str(path)


def _selected_info(infos: list[str], event: gr.SelectData) -> tuple[str, int]:
    index = event.index if isinstance(event.index, int) else 0
    return (infos[index] if index < len(infos) else ""), index


def _image_at(images: list[PIL.Image.Image], index: int) -> PIL.Image.Image:
    if not images:
        raise gr.Error("generate an image first")
    return images[min(index, len(images) - 1)]


def _editor_image(value: dict | None) -> tuple[PIL.Image.Image | None, PIL.Image.Image | None]:
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


def _png_parameters(file: Any) -> str:
    from sdlab.images import read_png_text

    if file is None:
        return ""
    path = file if isinstance(file, str) else getattr(file, "name", "")
    try:  # the bytes, not the path: gradio has checked the file is an upload; messages name no server path
        return read_png_text(Path(path).read_bytes(), what="the PNG").get(
            "parameters", "this PNG carries no generation parameters"
        )
    except InputError as err:
        raise gr.Error(str(err)) from None


def _parameters_to_fields(text: str) -> tuple:
    """A1111 infotext -> txt2img's fields (A1111's "send to txt2img")."""
    if not text.strip():
        raise gr.Error("drop a PNG with generation parameters first")
    prompt, negative, settings = parse_parameters(text)
    width, _, height = settings.get("Size", "").partition("x")
    try:  # old A1111 wrote "DPM++ 2M Karras", 1.9+ writes "DPM++ 2M" and "Schedule type: Karras"
        name = (
            resolve_sampler(settings["Sampler"], settings.get("Schedule type"))
            if "Sampler" in settings
            else None
        )
    except InputError:  # a schedule type sdlab has not: the sampler on its own schedule, if sdlab has it
        try:
            name = resolve_sampler(settings["Sampler"], None)
        except InputError:
            name = None  # a sampler sdlab has not: the model's default
    sampler = SCHEDULERS[name].a1111 if name else MODEL_DEFAULT

    def number(key: str, kind: type) -> Any:
        try:
            return kind(settings[key]) if key in settings else gr.skip()
        except ValueError:
            raise gr.Error(f"{key}: {settings[key]!r} is not a {kind.__name__}") from None

    return (
        prompt,
        negative,
        sampler,
        number("Steps", int),
        number("CFG scale", float),
        number("Seed", int),
        int(width) if width.isdigit() else gr.skip(),
        int(height) if height.isdigit() else gr.skip(),
        gr.Tabs(selected="txt2img"),
    )


def _model_defaults(worker: Worker):
    def defaults(name: str) -> tuple:
        def read(w: Worker) -> tuple:
            pipe = w.registry.pipeline(w.registry.find_model(name))
            d = pipe.sampling_defaults
            return (
                d.get("num_inference_steps", 30),
                d.get("guidance_scale", 7.5),
                pipe.default_size,
                pipe.default_size,
            )

        try:
            return worker.run(read)
        except (InputError, QueueFull) as err:
            raise gr.Error(str(err)) from None

    return defaults


def _accuracy_table(plot) -> str:
    if plot.accuracy is None:
        return ""
    x = [str(v) for v in plot.x_values]
    rows = ["| | " + " | ".join(x) + " |", "|---" * (len(x) + 1) + "|"]
    for y, row in zip(plot.y_values, plot.accuracy, strict=True):
        cells = " | ".join("—" if a is None else f"{a:.0%}" for a in row)
        rows.append(f"| {'' if y is None else y} | {cells} |")
    return (
        "Share of each cell's digits that the evaluation classifier reads as the prompted digit:\n\n"
        + "\n".join(rows)
    )


def _probability_plot(probabilities: list[float], digit: int | None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 2.6))
    axis.plot(range(1, len(probabilities) + 1), probabilities, marker="o")
    axis.set(xlabel="step", ylabel=f"p(digit {digit} | x̂₀)", ylim=(-0.02, 1.02))
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure
