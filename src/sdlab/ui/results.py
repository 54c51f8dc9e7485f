"""Where a generating tab shows its results: live progress, the gallery, the infotexts, the PNG files.

Results are PNG files with their `parameters` and `sdlab` chunks, so a downloaded image is the CLI's
image with its recipe. The gallery shows small images (the digits model's 32 x 32) enlarged with
nearest-neighbour sampling, in the page only (CSS `image-rendering: pixelated`); the files stay the
real images. The files live in one folder per server, pruned to `OutputFolder.limit` files.
"""

from __future__ import annotations

import atexit
import itertools
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import PIL.Image

from sdlab.errors import InputError
from sdlab.service import GeneratedImage, GenerationRequest, RequestResult
from sdlab.service.worker import QueueFull, Worker

# the page's styles: full-width progress bars; small images enlarged without blurring
CSS = """
.sdlab-progress progress { width: 100%; }
.sdlab-pixels img { image-rendering: pixelated; }
"""
OUTPUTS = 9  # what `watch` yields, in the order `result_area`'s `outputs` lists them


class OutputFolder:
    """The UI's PNG files: one private folder per server, the oldest pruned beyond `limit` files,
    removed when the process exits."""

    def __init__(self, limit: int = 512) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="sdlab-ui-"))
        self.limit = limit
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        atexit.register(shutil.rmtree, self.path, ignore_errors=True)

    def write(self, image: GeneratedImage) -> str:
        """NNNNN-SEED.png, numbered as A1111 numbers its outputs."""
        with self._lock:
            path = self.path / f"{next(self._numbers):05d}-{image.recipe['seed']}.png"
            path.write_bytes(image.png())
            self._prune()
        return str(path)

    def save(self, image: PIL.Image.Image, stem: str) -> str:
        """Another image (an X/Y grid) in the same folder, under the same bound."""
        with self._lock:
            path = self.path / f"{next(self._numbers):05d}-{stem}.png"
            image.save(path)
            self._prune()
        return str(path)

    def _prune(self) -> None:
        files = sorted(self.path.glob("*.png"))  # numbered: oldest first
        for old in files[: max(0, len(files) - self.limit)]:
            old.unlink(missing_ok=True)


def result_area(prefix: str) -> dict[str, Any]:
    """Progress, preview, gallery, generation info, the PNG files and "send to img2img"."""
    out: dict[str, Any] = {}
    with gr.Row():
        out["progress"] = gr.HTML(elem_id=f"{prefix}-progress", elem_classes=["sdlab-progress"])
        out["preview"] = gr.Image(
            label="Preview", type="pil", format="png", elem_id=f"{prefix}-preview", height=160,
            interactive=False, elem_classes=["sdlab-pixels"],
        )  # fmt: skip
    out["gallery"] = gr.Gallery(
        label="Results", columns=8, fit_columns=False, format="png", elem_id=f"{prefix}-gallery", height=340,
        preview=False, object_fit="contain", buttons=["download", "fullscreen"], elem_classes=["sdlab-pixels"],
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
    out["outputs"] = [out[k] for k in ("progress", "preview", "gallery", "files", "info", "last_seed", "infos",
                                       "images", "selected")]  # fmt: skip
    out["gallery"].select(_selected_info, inputs=out["infos"], outputs=[out["info"], out["selected"]])
    return out


def watch(worker: Worker, request: GenerationRequest, files: OutputFolder) -> Iterator[tuple]:
    """Submit, then report this job's progress (bar, step, ETA, preview) until its result arrives;
    yields the `result_area` outputs."""
    try:
        future = worker.submit(request)
    except (InputError, QueueFull) as err:
        raise gr.Error(worker.registry.public(str(err))) from None
    unchanged = (gr.skip(),) * (OUTPUTS - 2)
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
        raise gr.Error(worker.registry.public(str(err))) from None
    paths = [files.write(image) for image in result.images]
    gallery = [
        (path, f"seed {image.recipe['seed']}") for path, image in zip(paths, result.images, strict=True)
    ]
    infos = [image.infotext for image in result.images]
    first_seed = result.seeds[0] if result.seeds else -1
    images = [image.image for image in result.images]
    yield status(result), None, gallery, paths, infos[0] if infos else "", first_seed, infos, images, 0


def status(result: RequestResult) -> str:
    """ "done: 1 image", "done: 4 images, 1 stopped early (interrupted or skipped)"."""
    n = len(result.images)
    stopped = sum(1 for image in result.images if image.recipe.get("stopped_at_step"))
    text = f"done: {n} image{'' if n == 1 else 's'}"
    return text + (f", {stopped} stopped early (interrupted or skipped)" if stopped else "")


def image_at(images: list[PIL.Image.Image], index: int) -> PIL.Image.Image:
    if not images:
        raise gr.Error("generate an image first")
    return images[min(index, len(images) - 1)]


def _selected_info(infos: list[str], event: gr.SelectData) -> tuple[str, int]:
    index = event.index if isinstance(event.index, int) else 0
    return (infos[index] if index < len(infos) else ""), index
