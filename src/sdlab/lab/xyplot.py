"""X/Y plot: one request varied over two parameters, as a labelled grid (A1111's "X/Y/Z plot" script).

Axes: CFG scale, steps, sampler, seed, denoising strength, and prompt S/R (search and replace: the
first value is searched for in the prompt and each value put in its place). On the digits model each
cell also carries the judges' verdict, the share of its images read as the digit the prompt names by the
stricter of `sdlab eval`'s judges, so the lesson notes' points on guidance scale and strength become pictures with numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch

from sdlab.digits.captioner import WORDS
from sdlab.errors import InputError
from sdlab.options import text_parser
from sdlab.sampling.params import SamplingParams
from sdlab.sampling.schedulers import SCHEDULERS, resolve_sampler
from sdlab.service import GeneratedImage, GenerationRequest, ModelRegistry, run_request
from sdlab.service.registry import DIGITS

# axis name -> (request field, value parser): the settings with an infotext name and one number each
# ("Steps", "CFG scale", "Denoising strength", "Deep cache", ...), read from `SamplingParams`
AXES: dict[str, tuple[str, Any]] = {
    "Nothing": ("", str),
    **{
        f.metadata["infotext"]: (f.name, text_parser(SamplingParams, f.name))
        for f in fields(SamplingParams)
        if "infotext" in f.metadata and f.name != "guidance_interval"
    },
    "Sampler": ("scheduler", str),
    "Seed": ("seed", int),
    "Prompt S/R": ("prompt", str),
}
MAX_CELLS = 64


@dataclass
class XYPlot:
    grid: PIL.Image.Image  # labelled, one cell per (x, y) value, cells' images side by side
    cells: list[list[list[GeneratedImage]]]  # [row][column] -> images
    x_values: list[Any]
    y_values: list[Any]
    accuracy: list[list[float | None]] | None  # [row][column]: share read as the prompted digit, worse judge


def parse_values(axis: str, text: str) -> list[Any]:
    """A1111's axis values: comma-separated; for numbers also ranges "1-5" (step 1) and "1-5 (+2)"."""
    if axis not in AXES:
        raise InputError(f"unknown axis {axis!r}; choose one of: {', '.join(AXES)}")
    if axis == "Nothing":
        return [None]
    field, kind = AXES[axis]
    values: list[Any] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        ranged = re.fullmatch(
            r"(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)(?:\s*\(\s*\+\s*(\d+(?:\.\d+)?)\s*\))?", part
        )
        if kind is not str and ranged:
            start, stop, step = float(ranged[1]), float(ranged[2]), float(ranged[3] or 1)
            count = int((stop - start) / step) + 1 if step > 0 else 0
            if not 1 <= count <= MAX_CELLS:
                raise InputError(
                    f"{axis}: {part!r} must be an increasing range of at most {MAX_CELLS} values"
                )
            values += [kind(start + i * step) for i in range(count)]
            continue
        try:
            values.append(kind(part))
        except ValueError:
            raise InputError(f"{axis}: {part!r} is not a {kind.__name__}") from None
    if axis == "Sampler":
        values = [resolve_sampler(v, None) for v in values]
    if not values:
        raise InputError(f"{axis}: give at least one value, separated by commas")
    if len(values) > MAX_CELLS:
        raise InputError(f"{axis}: {len(values)} values is more than {MAX_CELLS}")
    return values


def xy_grid(
    registry: ModelRegistry,
    base: GenerationRequest,
    x_axis: str,
    x_values: list[Any],
    y_axis: str = "Nothing",
    y_values: list[Any] | None = None,
) -> XYPlot:
    """Run `base` once per (x, y) and lay the results out; raises `InputError` for a bad axis or value."""
    y_values = y_values or [None]
    if len(x_values) * len(y_values) > MAX_CELLS:
        raise InputError(
            f"{len(x_values)} x {len(y_values)} cells is more than {MAX_CELLS}; use fewer values"
        )
    if "Denoising strength" in (x_axis, y_axis) and base.init_image is None:
        raise InputError("the denoising strength axis needs an init image to start from")
    if "Prompt S/R" in (x_axis, y_axis):
        search = (x_values if x_axis == "Prompt S/R" else y_values)[0]
        if search not in base.prompt:
            raise InputError(f"Prompt S/R: the first value, {search!r}, must appear in the prompt")
    cells: list[list[list[GeneratedImage]]] = []
    for y in y_values:
        row = []
        for x in x_values:
            request = _apply(_apply(base, x_axis, x, x_values), y_axis, y, y_values)
            row.append(run_request(registry, request).images)
        cells.append(row)
    accuracy = None
    if registry.find_model(base.model).name == DIGITS:
        readers = _judges()
        accuracy = [[_digit_accuracy(images, readers) for images in row] for row in cells]
    grid = draw_grid(
        cells, [_label(x_axis, v) for v in x_values], [_label(y_axis, v) for v in y_values], accuracy
    )
    return XYPlot(grid, cells, x_values, y_values, accuracy)


def prompted_digit(prompt: str) -> int | None:
    """The digit a prompt names ("a handwritten digit 7", "a seven"), the last one if several."""
    found = re.findall(rf"\b([0-9]|{'|'.join(WORDS)})\b", prompt.lower())
    if not found:
        return None
    last = found[-1]
    return int(last) if last.isdigit() else WORDS.index(last)


def draw_grid(
    cells: list[list[list[GeneratedImage]]],
    x_labels: list[str],
    y_labels: list[str],
    accuracy: list[list[float | None]] | None = None,
) -> PIL.Image.Image:
    """The cells' images in a grid with the axis labels above and left, and each cell's verdict under it."""
    first = cells[0][0][0].image
    scale = max(1, 96 // max(first.size))  # small models' images are enlarged to stay readable
    w, h = first.width * scale, first.height * scale
    per_cell = max(len(images) for row in cells for images in row)
    font = PIL.ImageFont.load_default(size=14)
    cell_w, cell_h = w * per_cell + 8, h + (22 if accuracy else 6)
    left = 12 + max(int(font.getlength(label)) for label in y_labels) if any(y_labels) else 6
    top = 28 if any(x_labels) else 6
    canvas = PIL.Image.new("RGB", (left + cell_w * len(x_labels), top + cell_h * len(y_labels)), "white")
    draw = PIL.ImageDraw.Draw(canvas)
    for c, label in enumerate(x_labels):
        draw.text((left + c * cell_w + cell_w / 2, top / 2), label, fill="black", font=font, anchor="mm")
    for r, label in enumerate(y_labels):
        draw.text((6, top + r * cell_h + h / 2), label, fill="black", font=font, anchor="lm")
    for r, row in enumerate(cells):
        for c, images in enumerate(row):
            x0, y0 = left + c * cell_w + 4, top + r * cell_h
            for i, image in enumerate(images):
                canvas.paste(image.image.resize((w, h), PIL.Image.NEAREST), (x0 + i * w, y0))
            if accuracy and accuracy[r][c] is not None:
                text = f"{accuracy[r][c]:.0%} read as prompted"
                draw.text((x0 + w * per_cell / 2, y0 + h + 10), text, fill="#444", font=font, anchor="mm")
    return canvas


def _apply(request: GenerationRequest, axis: str, value: Any, values: list[Any]) -> GenerationRequest:
    if axis == "Nothing" or value is None:
        return request
    field = AXES[axis][0]
    if axis == "Prompt S/R":
        return request.replace(prompt=request.prompt.replace(values[0], value))
    return request.replace(**{field: value})


def _label(axis: str, value: Any) -> str:
    if axis == "Nothing" or value is None:
        return ""
    if axis == "Sampler":
        return SCHEDULERS[value].a1111
    return f"{axis}: {value:g}" if isinstance(value, float) else f"{axis}: {value}"


def _judges() -> list:
    from sdlab.evaluation.digits import JUDGES

    return [architecture.load(weights) for architecture, weights, _ in JUDGES.values()]


def _digit_accuracy(images: list[GeneratedImage], readers: list) -> float | None:
    digit = prompted_digit(images[0].recipe["prompt"])
    if digit is None:
        return None
    from sdlab.digits.data import to_gray

    pixels = torch.stack(
        [torch.from_numpy(np.array(g.image.convert("RGB"))).permute(2, 0, 1) / 255 for g in images]
    )
    gray = to_gray(pixels)
    # the worse of the judges, as `sdlab eval`'s headline: a cell is not "read as prompted" on one judge's word
    return min(float((reader.predict(gray) == digit).float().mean()) for reader in readers)
