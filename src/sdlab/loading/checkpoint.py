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
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"Checkpoint {path} is not a valid .safetensors file ({e}).") from e
        return _unwrap(loaded, path)
    tensors = _unwrap(read_pickle(path, allow_pickle=allow_pickle), path)
    for key in list(tensors):  # one at a time: each original is released as its cast replaces it
        tensors[key] = _cast(tensors[key], dtype)
    return tensors


# safetensors' dtype names (its format description) -> torch
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def _read_cast(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A .safetensors file read tensor by tensor with plain reads, each cast to `dtype` as it arrives.

    The safetensors library memory-maps the file: every page it reads stays resident in this process
    beside the cast copy (a 2.1 GB float16 SD 1.5 file loaded as bfloat16 peaked at 4.6 GB). Read this
    way, the peak is the cast weights plus one tensor. The layout is safetensors' documented one: an
    8-byte little-endian header length, a JSON header of {name: {dtype, shape, data_offsets}}, the data;
    every entry is checked against the file's size before it is read. Raises ValueError on a bad header.
    """
    size = path.stat().st_size
    out: dict[str, torch.Tensor] = {}
    with path.open("rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if not 0 < length <= size - 8:
            raise ValueError(f"header length {length} does not fit a {size}-byte file")
        header = json.loads(f.read(length))
        base = 8 + length
        entries = sorted(
            ((k, v) for k, v in header.items() if k != "__metadata__"),
            key=lambda kv: kv[1]["data_offsets"][0],
        )
        for key, info in entries:
            kind, shape, (start, end) = SAFETENSORS_DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
            nbytes = math.prod(shape) * kind.itemsize
            if end - start != nbytes or start < 0 or base + end > size:
                raise ValueError(f"tensor {key!r} does not fit its offsets")
            f.seek(base + start)
            data = bytearray(nbytes)
            if f.readinto(data) != nbytes:
                raise ValueError(f"tensor {key!r} is cut short")
            tensor = (
                torch.frombuffer(data, dtype=kind).reshape(shape)
                if nbytes
                else torch.empty(shape, dtype=kind)
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
