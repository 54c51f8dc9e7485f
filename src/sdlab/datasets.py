"""Image-caption datasets from a folder, in the two conventions people already use.

- Hugging Face imagefolder: a `metadata.jsonl` whose lines are {"file_name": "a.png", "text": "..."}
  (the caption column may also be called "caption" or "prompt"); file names are relative to it.
- kohya-ss sidecars: `a.png` captioned by `a.txt` (or `a.caption`) beside it.

A metadata.jsonl line wins over a sidecar. Every image is opened before training starts, so a broken
file is reported by name instead of crashing a run hours in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from sdlab.errors import InputError
from sdlab.images import load_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CAPTION_COLUMNS = ("text", "caption", "prompt")
SIDECAR_SUFFIXES = (".txt", ".caption")
METADATA = "metadata.jsonl"


@dataclass(frozen=True)
class CaptionedImage:
    path: Path
    caption: str | None  # None: the folder gives no caption for it


def read_folder(folder: str | Path, *, require_captions: bool = True) -> list[CaptionedImage]:
    """Every image under `folder` (recursively, sorted) with its caption; checks every image opens."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"dataset folder {folder} does not exist or is not a folder")
    captions = _metadata_captions(folder)
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise InputError(f"dataset folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    items = [CaptionedImage(p, captions.get(p.resolve(), _sidecar_caption(p))) for p in images]
    for item in items:
        load_image(item.path, what="training image")  # InputError names the file
    missing = [item.path for item in items if item.caption is None]
    if require_captions and missing:
        raise InputError(
            f"{len(missing)} of {len(items)} images have no caption, e.g. {missing[0]}; add a metadata.jsonl "
            f"line or a .txt sidecar for each (sdlab caption DIR writes them)"
        )
    return items


def load_pixels(items: list[CaptionedImage], size: int) -> torch.Tensor:
    """(N, 3, size, size) in [-1, 1]: each image resized on its short side to `size` and centre-cropped."""
    arrays = []
    for item in items:
        image = ImageOps.fit(load_image(item.path), (size, size), method=Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.float32) / 127.5 - 1)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def write_metadata(folder: str | Path, captions: dict[Path, str], *, sidecars: bool = False) -> Path:
    """Write `metadata.jsonl` (and optionally .txt sidecars) for `captions` {image path: caption}."""
    from sdlab.training.atomic import atomic_path

    folder = Path(folder)
    lines = [
        json.dumps({"file_name": path.resolve().relative_to(folder.resolve()).as_posix(), "text": text})
        for path, text in sorted(captions.items())
    ]
    with atomic_path(folder / METADATA) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    if sidecars:
        for path, text in captions.items():
            with atomic_path(path.with_suffix(".txt")) as tmp:
                tmp.write_text(text + "\n")
    return folder / METADATA


def _metadata_captions(folder: Path) -> dict[Path, str]:
    file = folder / METADATA
    if not file.is_file():
        return {}
    captions = {}
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name = row["file_name"]
            column = next(c for c in CAPTION_COLUMNS if c in row)
        except (json.JSONDecodeError, KeyError, TypeError, StopIteration):
            raise InputError(
                f"{file} line {number} is not a JSON object with a file_name and a "
                f"{'/'.join(CAPTION_COLUMNS)} field"
            ) from None
        path = (folder / name).resolve()
        if not path.is_file():
            raise InputError(f"{file} line {number} names {name}, which is not in {folder}")
        captions[path] = str(row[column]).strip()
    return captions


def _sidecar_caption(image: Path) -> str | None:
    for suffix in SIDECAR_SUFFIXES:
        sidecar = image.with_suffix(suffix)
        if sidecar.is_file():
            return sidecar.read_text(encoding="utf-8").strip()
    return None
