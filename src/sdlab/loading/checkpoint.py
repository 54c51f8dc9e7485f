"""Reading a single-file checkpoint (`.safetensors`, or a trusted pickle) into a flat state dict.

Pickle formats (`.ckpt`, `.pt`, `.pth`, `.bin`) can run arbitrary code when they are unpickled, so they are
refused unless the caller says it trusts the file (`--allow-pickle`), and even then they are read only with
`torch.load(weights_only=True)`, whose unpickler builds tensors and plain containers and nothing else.
"""

from __future__ import annotations

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


def read_state_dict(path: str | Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, on the CPU, keyed as in the file.

    A top-level "state_dict" entry (CompVis / A1111 `.ckpt` files) is unwrapped; entries that are not tensors
    (`global_step`, `epoch`) are dropped.
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
            loaded = load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"Checkpoint {path} is not a valid .safetensors file ({e}).") from e
    else:
        loaded = read_pickle(path, allow_pickle=allow_pickle)

    return _unwrap(loaded, path)


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
