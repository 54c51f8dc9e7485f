"""Image-caption datasets from a folder, in the two conventions people already use.

- Hugging Face imagefolder: a `metadata.jsonl` whose lines are {"file_name": "a.png", "text": "..."}
  (the caption column may also be called "caption" or "prompt"); file names are relative to it.
- kohya-ss sidecars: `a.png` captioned by `a.txt` (or `a.caption`) beside it.

A metadata.jsonl line wins over a sidecar. Every image is opened before training starts, so a broken
file is reported by name instead of crashing a run hours in.

Caption text, from either source: UTF-8, or any encoding a byte-order mark names (UTF-8 with BOM,
UTF-16 and UTF-32, as Windows Notepad saves "Unicode"); CRLF or LF line ends; surrounding blanks
stripped. A sidecar's caption is its first non-empty line (kohya-ss takes the first line, and
refuses an empty file); an empty sidecar
or `"text": ""` is the empty caption (the unconditional prompt, as caption dropout uses). A `null`,
a number or a list where a caption should be, or text in another encoding, is refused with a
sentence naming the file (and the line of metadata.jsonl).
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from sdlab.errors import InputError
from sdlab.images import GRID_CHUNK, load_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CAPTION_COLUMNS = ("text", "caption", "prompt")
SIDECAR_SUFFIXES = (".txt", ".caption")
METADATA = "metadata.jsonl"
# byte-order marks, longest first: UTF-32 LE's begins with UTF-16 LE's
BOMS = [
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
]


@dataclass(frozen=True)
class CaptionedImage:
    path: Path
    caption: str | None  # None: the folder gives no caption for it


def read_folder(
    folder: str | Path, *, require_captions: bool = True, metadata: bool = True
) -> list[CaptionedImage]:
    """Every image under `folder` (recursively, sorted) with its caption; checks every image opens.
    `metadata` False leaves metadata.jsonl unread (a captioner about to replace it: a line naming a deleted
    image is no error then)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"dataset folder {folder} does not exist or is not a folder")
    captions = _metadata_captions(folder) if metadata else {}
    images = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not _grid(p)
    )
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


def crop_geometry(items: list[CaptionedImage], size: int) -> torch.Tensor:
    """(N, 4) float32: each image's original (height, width) and the top-left corner (top, left) that
    `load_pixels`' centre crop takes, in pixels of the image resized on its short side to `size`.

    SDXL is trained on these ("micro-conditioning", Podell et al. 2023, section 2.2); as diffusers'
    `train_dreambooth_lora_sdxl.py` records them for its centre crop."""
    rows = []
    for item in items:
        with Image.open(item.path) as image:  # the header only: read_folder has opened every image already
            width, height = image.size
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # load_image turns these a quarter
                width, height = height, width
        scale = size / min(width, height)
        top = max(0, round((height * scale - size) / 2))
        left = max(0, round((width * scale - size) / 2))
        rows.append([height, width, top, left])
    return torch.tensor(rows, dtype=torch.float32)


def write_metadata(folder: str | Path, captions: dict[Path, str], *, sidecars: bool = False) -> Path:
    """Write `metadata.jsonl` (and optionally .txt sidecars) for `captions` {image path: caption}."""
    from sdlab.atomic import atomic_path

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


def read_text(path: Path) -> str:
    """The text of `path`: UTF-8, or the encoding its byte-order mark names; InputError otherwise."""
    data = path.read_bytes()
    encoding = next((name for bom, name in BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise InputError(
            f"{path} is not {encoding.upper()} text (a bad byte at position {err.start}); save it as UTF-8"
        ) from None


def _metadata_captions(folder: Path) -> dict[Path, str]:
    file = folder / METADATA
    if not file.is_file():
        return {}
    captions = {}
    # only "\n" ends a line: JSON strings may hold U+2028 and the like, which splitlines() would split on
    for number, line in enumerate(read_text(file).split("\n"), start=1):
        line = line.removesuffix("\r")
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
        caption = row[column]
        if not isinstance(caption, str):
            kind = "null" if caption is None else type(caption).__name__
            raise InputError(
                f"{file} line {number}: the {column} is {kind} ({json.dumps(caption)}), not text; write it "
                f'as a string, or "" for an empty caption'
            )
        if not isinstance(name, str) or not (folder / name).resolve().is_file():
            raise InputError(f"{file} line {number} names {name}, which is not in {folder}")
        captions[(folder / name).resolve()] = caption.strip()
    return captions


def _grid(path: Path) -> bool:
    """Whether `path` is a grid sdlab wrote beside its images (`-n N`), which is no training image: a PNG with the
    `GRID_CHUNK` text chunk."""
    if path.suffix.lower() != ".png":
        return False
    try:
        with Image.open(path) as image:
            return GRID_CHUNK in getattr(image, "text", {})
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False  # load_image names what is wrong with it


def _sidecar_caption(image: Path) -> str | None:
    for suffix in SIDECAR_SUFFIXES:
        sidecar = image.with_suffix(suffix)
        if sidecar.is_file():
            lines = [line.strip() for line in read_text(sidecar).splitlines() if line.strip()]
            return lines[0] if lines else ""
    return None
