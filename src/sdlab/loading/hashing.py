"""A1111's "Model hash": a short fingerprint of the weights, written into every image's metadata.

For a single file it is A1111's "AutoV2" hash: the first 10 hex digits of the sha256 of the whole file, so a
hash printed by sdlab matches the one A1111 (and civitai) shows for the same `.safetensors`.

A diffusers folder has no A1111 equivalent. sdlab hashes the bytes of its weight files (`*.safetensors`,
`*.bin`, `*.ckpt`, `*.pt`, `*.pth`, at any depth) concatenated in sorted order of their relative POSIX paths
(`text_encoder/model.safetensors` < `unet/...` < `vae/...`). Configs are not hashed: the hash names weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from sdlab.errors import InputError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
HASH_LENGTH = 10
_CHUNK = 1 << 20  # 1 MiB reads keep memory flat on multi-GB checkpoints


def model_hash(path: str | Path) -> str:
    """The first 10 hex digits of the sha256 of a checkpoint file, or of a diffusers folder's weight files."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"Cannot hash {path}: it does not exist.")
    digest = hashlib.sha256()
    if path.is_dir():
        files = weight_files(path)
        if not files:
            suffixes = ", ".join(WEIGHT_SUFFIXES)
            raise InputError(f"Cannot hash folder {path}: it holds no weight files ({suffixes}).")
    else:
        files = [path]
    for file in files:
        for chunk in _chunks(file):
            digest.update(chunk)
    return digest.hexdigest()[:HASH_LENGTH]


def weight_files(folder: Path) -> list[Path]:
    """The weight files under `folder`, in the order `model_hash` reads them."""
    found = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _chunks(file: Path) -> Iterator[bytes]:
    with open(file, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk
