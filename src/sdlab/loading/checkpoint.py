"""Reading a single-file checkpoint (`.safetensors`, or a trusted pickle) into a flat state dict.

Pickle formats (`.ckpt`, `.pt`, `.pth`, `.bin`) can run arbitrary code when they are unpickled, so they are
refused unless the caller says it trusts the file (`--allow-pickle`), and even then they are read only with
`torch.load(weights_only=True)`, whose unpickler builds tensors and plain containers and nothing else.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from sdlab.errors import InputError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CHECKPOINT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES


def is_single_file(path: str | Path) -> bool:
    """True when `path` names a single-file checkpoint by its extension (it need not exist)."""
    return Path(path).suffix.lower() in CHECKPOINT_SUFFIXES


def read_state_dict(
    path: str | Path, *, allow_pickle: bool = False, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, on the CPU, keyed as in the file.

    A top-level "state_dict" entry (CompVis / A1111 `.ckpt` files) is unwrapped; entries that are not tensors
    (`global_step`, `epoch`) are dropped. With `dtype`, floating-point tensors are cast as they are read
    (a .safetensors file one tensor at a time), so memory holds the weights once, at the precision they
    will run at, not the file's copy beside the cast one.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.is_dir():
        raise InputError(f"Checkpoint {path} is a folder, not a checkpoint file.")
    if suffix not in CHECKPOINT_SUFFIXES:
        allowed = ", ".join(CHECKPOINT_SUFFIXES)
        raise InputError(f"Checkpoint {path} has an unknown extension {suffix!r}; expected one of {allowed}.")
    if path.stat().st_size == 0:
        raise InputError(f"Checkpoint {path} is empty (0 bytes).")

    if suffix in SAFETENSORS_SUFFIXES:
        try:
            loaded = load_file(path, device="cpu") if dtype is None else _read_cast(path, dtype)
        except (SafetensorError, OSError, ValueError, RecursionError) as e:
            raise InputError(f"Checkpoint {path} is not a valid .safetensors file ({e}).") from e
        return _unwrap(loaded, path)
    tensors = _unwrap(read_pickle(path, allow_pickle=allow_pickle), path)
    for key in list(tensors):  # one at a time: each original is released as its cast replaces it
        tensors[key] = _cast(tensors[key], dtype)
    return tensors


# safetensors' dtype names (its format description) -> torch
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit


def _read_cast(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A .safetensors file read tensor by tensor with plain reads, each cast to `dtype` as it arrives.

    The safetensors library memory-maps the file, and every page it reads stays resident in this process
    beside the cast copy: a 2.1 GB float16 SD 1.5 file loaded as bfloat16 peaked at 4.9 GB, read this way
    at 2.6 GB (the cast weights plus one tensor). The layout is safetensors' documented one: an 8-byte
    little-endian header length, a JSON header of {name: {dtype, shape, data_offsets}}, then the data.
    The header is checked as the library checks it before any tensor is read: at most 100 MB, shapes of
    non-negative integers, and offsets that tile the data exactly (no gaps, no overlaps, no bytes past
    the end), so no entry can make this read more than the file holds. Raises ValueError otherwise.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if not 0 < length <= min(size - 8, MAX_HEADER_BYTES):
            raise ValueError(f"header length {length} does not fit a {size}-byte file")
        header = json.loads(f.read(length))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        entries = []
        for key, info in header.items():
            if key == "__metadata__":
                continue
            if not isinstance(info, dict) or not isinstance(info.get("dtype"), str):
                raise ValueError(f"tensor {key!r} has no dtype")
            if info["dtype"] not in SAFETENSORS_DTYPES:
                raise ValueError(f"tensor {key!r} has no known dtype")
            shape, offsets = info.get("shape"), info.get("data_offsets")
            if not isinstance(shape, list) or not all(type(n) is int and 0 <= n < 2**62 for n in shape):
                raise ValueError(f"tensor {key!r} has a bad shape {shape!r}")
            if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)):
                raise ValueError(f"tensor {key!r} has bad data_offsets {offsets!r}")
            entries.append((offsets[0], offsets[1], key, SAFETENSORS_DTYPES[info["dtype"]], shape))
        entries.sort()
        expected_start = 0
        for start, end, key, kind, shape in entries:
            if start != expected_start or end - start != math.prod(shape) * kind.itemsize:
                raise ValueError(f"tensor {key!r} does not fit its data_offsets")
            expected_start = end
        if 8 + length + expected_start != size:
            raise ValueError("the tensors' data does not fill the file")
        out: dict[str, torch.Tensor] = {}
        for start, end, key, kind, shape in entries:
            data = bytearray(end - start)
            if f.readinto(data) != end - start:
                raise ValueError(f"tensor {key!r} is cut short")
            tensor = (
                torch.frombuffer(data, dtype=kind).reshape(shape) if data else torch.empty(shape, dtype=kind)
            )
            out[key] = _cast(tensor, dtype)
    return out


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def read_pickle(path: Path, *, allow_pickle: bool) -> object:
    """A pickle file through `torch.load(weights_only=True)`, or an InputError unless `allow_pickle`."""
    if not allow_pickle:
        raise InputError(
            f"Checkpoint {path} is a pickle file, which can run arbitrary code when loaded; "
            "pass --allow-pickle (allow_pickle=True) only if you trust where it came from, "
            "or use a .safetensors version of it."
        )
    try:
        # weights_only=True is the whole point: its unpickler refuses every global that is not a tensor
        # type or a plain container, so a malicious __reduce__ never runs.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is paragraphs long and suggests weights_only=False; keep only what was refused
        found = re.search(
            r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed global|\.? Please|\n|$)", str(e)
        )
        refused = found[1].strip() if found else type(e).__name__
        raise InputError(
            f"Checkpoint {path} holds Python objects other than tensors ({refused}), which the safe loader "
            "refuses; convert it to .safetensors with a tool you trust."
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise InputError(f"Checkpoint {path} is not a readable PyTorch file ({e}).") from e


def _unwrap(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    # Lightning checkpoints nest the weights one (occasionally more) level down.
    while isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise InputError(f"Checkpoint {path} holds a {type(loaded).__name__}, not a dict of tensors.")
    tensors = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise InputError(f"Checkpoint {path} contains no tensors.")
    return tensors


WEIGHT_FOLDERS = ("unet", "vae", "text_encoder", "text_encoder_2")


def weights_bytes(path: str | Path, dtype: torch.dtype) -> int:
    """Bytes a model's weights take once loaded in `dtype` (floating-point tensors cast, others as they are),
    from the safetensors headers alone: nothing is read beyond them. A diffusers folder counts its UNet,
    VAE and text encoders' files; a pickle, which has no header, counts as its file size."""
    path = Path(path)
    files = [path] if path.is_file() else [_loaded_file(path / sub) for sub in WEIGHT_FOLDERS]
    files = [f for f in files if f is not None]
    total = 0
    for file in files:
        if file.suffix.lower() in PICKLE_SUFFIXES:
            total += file.stat().st_size
        elif file.suffix.lower() in SAFETENSORS_SUFFIXES:
            total += _safetensors_bytes(file, dtype)
    return total


def _loaded_file(folder: Path) -> Path | None:
    """The weights file `from_pretrained` reads in a component folder: its safetensors without a variant
    (not `.fp16.` or `.non_ema.`), else the first safetensors, else the first pickle; None for none."""
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    plain = [f for f in files if f.name.count(".") == 1]
    pickles = sorted(folder.glob("*.bin")) if folder.is_dir() else []
    return next(iter(plain or files or pickles), None)


def _safetensors_bytes(file: Path, dtype: torch.dtype) -> int:
    """The header: 8 bytes of length, then JSON {name: {"dtype", "shape", "data_offsets"}}."""
    try:
        with file.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if not 0 < length < 100_000_000:
                return file.stat().st_size
            header = json.loads(f.read(length))
        total = 0
        for name, entry in header.items():
            if name == "__metadata__" or name.startswith("model_ema."):  # the EMA copy no loader reads
                continue
            numel = math.prod(entry["shape"])
            floating = entry["dtype"] in ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
            start, end = entry["data_offsets"]
            total += numel * dtype.itemsize if floating else end - start
        return total
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # damaged: loading will say so
        return file.stat().st_size


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The `__metadata__` strings of a .safetensors file's header ({} for another file or a damaged one;
    loading it says what is wrong)."""
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return {}
    try:
        with path.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if not 0 < length < 100_000_000:
                return {}
            metadata = json.loads(f.read(length)).get("__metadata__") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v for k, v in metadata.items() if isinstance(v, str)} if isinstance(metadata, dict) else {}
