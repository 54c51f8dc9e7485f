"""Captioned folders of training digits, in a chosen look: the data the teaching recipes start from.

`sdlab make-digits DIR --look underline` writes 32x32 PNGs of the digits model's *training* split (never the
held-out digits the evaluation reads) and a `metadata.jsonl` of captions written by the digits captioner, the
imagefolder layout every trainer reads. The looks are those the teaching demonstrations measure: a line under
each digit, digits leaning right, stretched sideways, or shrunk to half size.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from sdlab.digits.data import SIZE, train_test_split
from sdlab.errors import InputError

SHEAR = 0.5  # italic: x' = x + 0.5 (y - centre)
STRETCH = 1.35  # wide: 1.35x sideways
LINE_ROWS, LINE_COLS = slice(26, 28), slice(5, 23)  # the underline: 2 px tall, below where MNIST draws digits


def underline(gray: np.ndarray) -> np.ndarray:
    """(N, 28, 28) in [0, 1] -> the same digits with a 2-pixel line under them."""
    out = np.array(gray, dtype=np.float32, copy=True)
    out[:, LINE_ROWS, LINE_COLS] = 1.0
    return out


def shear(gray: np.ndarray, k: float = SHEAR) -> np.ndarray:
    """Lean digits right, x' = x + k (y - 14), as PIL's affine transform does it; (N, 28, 28) in [0, 1]."""
    out = []
    for digit in np.asarray(gray, dtype=np.float32):
        picture = Image.fromarray(digit, mode="F").transform(
            (28, 28), Image.Transform.AFFINE, (1, k, -k * 14, 0, 1, 0), resample=Image.Resampling.BILINEAR
        )
        out.append(np.asarray(picture))
    return np.stack(out).clip(0, 1)


def stretch(gray: np.ndarray, factor: float = STRETCH) -> np.ndarray:
    """Digits stretched sideways about the centre and cropped back to 28x28; (N, 28, 28) in [0, 1]."""
    width = round(28 * factor)
    left = (width - 28) // 2
    out = [
        Image.fromarray(np.asarray(d, dtype=np.float32), mode="F")
        .resize((width, 28), Image.Resampling.LANCZOS)
        .crop((left, 0, left + 28, 28))
        for d in gray
    ]
    return np.stack([np.asarray(o) for o in out]).clip(0, 1)


def shrink(gray: np.ndarray, scale: float = 0.5) -> np.ndarray:
    """Digits shrunk about the centre to `scale` of their size; (N, 28, 28) in [0, 1]."""
    side = max(1, round(28 * scale))
    out = np.zeros_like(np.asarray(gray, dtype=np.float32))
    start = (28 - side) // 2
    for i, digit in enumerate(gray):
        small = Image.fromarray(np.asarray(digit, dtype=np.float32), mode="F").resize(
            (side, side), Image.Resampling.LANCZOS
        )
        out[i, start : start + side, start : start + side] = np.asarray(small)
    return out.clip(0, 1)


# name -> (N, 28, 28) in [0, 1] -> the same digits in that look
LOOKS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "plain": lambda gray: np.asarray(gray, dtype=np.float32),
    "underline": underline,
    "italic": shear,
    "wide": stretch,
    "tiny": shrink,
}


def write_digits(folder: str | Path, gray: np.ndarray) -> list[Path]:
    """(N, 28, 28) digits (uint8, or float in [0, 1]) as 32x32 RGB PNGs `0000.png`..., padded as the digits
    model's data is (2 black pixels each side)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gray = np.asarray(gray)
    if gray.dtype != np.uint8:
        gray = (gray.clip(0, 1) * 255).round().astype(np.uint8)
    pad = (SIZE - 28) // 2
    paths = []
    for i, digit in enumerate(gray):
        canvas = Image.new("L", (SIZE, SIZE))
        canvas.paste(Image.fromarray(digit), (pad, pad))
        path = folder / f"{i:04d}.png"
        canvas.convert("RGB").save(path)
        paths.append(path)
    return paths


def make_digits_folder(
    folder: str | Path,
    *,
    count: int = 200,
    digit: int | None = None,
    look: str = "plain",
    token: str = "",
    captions: bool = True,
    seed: int = 0,
) -> list[Path]:
    """Write `count` training digits (all classes, or only `digit`) in `look` to `folder`, with captions.

    Captions are written by the digits captioner reading the digits as written ("a thick handwritten digit
    7", "... slanted to the right" for italic ones), as `sdlab caption` would; with `token`, every caption is
    "a TOKEN handwritten digit D" with the digit's own label, the form textual inversion learns a word from. Digits are drawn from the 4,000-digit training
    split in a random order fixed by `seed`, up to 400 of one class or 4,000 in all.

    Raises InputError for an unknown look, a digit outside 0-9, a count outside what the split holds, or a
    folder that already holds images (nothing is overwritten).
    """
    if look not in LOOKS:
        raise InputError(f"unknown look {look!r}: choose one of {', '.join(LOOKS)}")
    if digit is not None and not 0 <= digit <= 9:
        raise InputError(f"--digit must be 0 to 9, got {digit}")
    train, _ = train_test_split()
    pool = np.arange(len(train)) if digit is None else np.flatnonzero(train.labels == digit)
    if not 1 <= count <= len(pool):
        raise InputError(f"--count must be 1 to {len(pool)} (the training digits there are), got {count}")
    folder = Path(folder)
    if folder.exists() and any(p.suffix.lower() == ".png" for p in folder.iterdir()):
        raise InputError(f"{folder} already holds images: choose a new folder")
    pick = np.random.default_rng(seed).permutation(pool)[:count]
    looked = LOOKS[look](train.images[pick].astype(np.float32) / 255.0)
    paths = write_digits(folder, looked)
    if captions:
        if token:
            texts = [f"a {token} handwritten digit {label}" for label in train.labels[pick]]
        else:
            from sdlab.digits.captioner import DigitsCaptioner
            from sdlab.loading import DEFAULT_MODEL

            texts = DigitsCaptioner.load(DEFAULT_MODEL / "captioner.safetensors").caption(looked)
        lines = [json.dumps({"file_name": p.name, "text": t}) for p, t in zip(paths, texts, strict=True)]
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return paths
