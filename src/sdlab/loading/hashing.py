"""A1111's "Model hash": a short fingerprint of the weights, written into every image's metadata.

For a single file it is A1111's "AutoV2" hash: the first 10 hex digits of the sha256 of the whole file, so a
hash printed by sdlab matches the one A1111 (and civitai) shows for the same `.safetensors`.

A diffusers folder has no A1111 equivalent. sdlab hashes the bytes of its weight files (`*.safetensors`,
`*.bin`, `*.ckpt`, `*.pt`, `*.pth`, at any depth) concatenated in sorted order of their relative POSIX paths
(`text_encoder/model.safetensors` < `unet/...` < `vae/...`). Configs are not hashed: the hash names weights.

Hashing a 4 GB checkpoint takes seconds, so, as A1111 does, each result is cached by path, size and
modification time (`hashes.json` in `$SDLAB_CACHE_DIR`, else `$XDG_CACHE_HOME/sdlab` or
`~/.cache/sdlab`); a changed file is hashed again. A cache that cannot be read or written is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
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
    if path.is_dir():
        files = weight_files(path)
        if not files:
            suffixes = ", ".join(WEIGHT_SUFFIXES)
            raise InputError(f"Cannot hash folder {path}: it holds no weight files ({suffixes}).")
    else:
        files = [path]
    key = str(path.resolve())
    stamp = [[f.relative_to(path).as_posix() if path.is_dir() else f.name, *_stamp(f)] for f in files]
    cache = _read_cache()
    if cache.get(key, {}).get("stamp") == stamp:
        return cache[key]["hash"]
    digest = hashlib.sha256()
    for file in files:
        for chunk in _chunks(file):
            digest.update(chunk)
    short = digest.hexdigest()[:HASH_LENGTH]
    _write_cache({**_read_cache(), key: {"stamp": stamp, "hash": short}})
    return short


def cache_file() -> Path:
    root = (
        os.environ.get("SDLAB_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sdlab"
    )
    return Path(root) / "hashes.json"


def _stamp(file: Path) -> list[int]:
    info = file.stat()
    return [info.st_size, info.st_mtime_ns]


def _read_cache() -> dict:
    try:
        cache = json.loads(cache_file().read_text())
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict) -> None:
    from sdlab.atomic import atomic_path

    try:
        with atomic_path(cache_file()) as tmp:
            tmp.write_text(json.dumps(cache, indent=1))
    except OSError:
        pass  # a read-only home: hash again next time


def weight_files(folder: Path) -> list[Path]:
    """The weight files under `folder`, in the order `model_hash` reads them. A tiny decoder beside the
    model (`vae_tiny/`, `--vae-decoder tiny`) is not part of it: adding one leaves the hash as it was."""
    found = [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in WEIGHT_SUFFIXES
        and p.relative_to(folder).parts[0] != "vae_tiny"
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _chunks(file: Path) -> Iterator[bytes]:
    with open(file, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk
