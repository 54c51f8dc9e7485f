"""Reading checkpoint files: pickles never run code, bad files fail with one sentence naming the file."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdlab.errors import InputError
from sdlab.loading.checkpoint import is_single_file, read_state_dict


class MakesFile:
    """A pickle payload: unpickling it calls `open(marker, "w")`, creating the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def weights() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(3, 4, generator=generator), "a.bias": torch.randn(3, generator=generator)}


@pytest.fixture
def malicious_ckpt(tmp_path: Path, weights: dict[str, torch.Tensor]) -> tuple[Path, Path]:
    """A1111-shaped `.ckpt` (torch zip format) with a payload hidden next to real tensors."""
    marker = tmp_path / "pwned"
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {**weights, "payload": MakesFile(marker)}}, path)
    assert not marker.exists()
    return path, marker


def test_payload_is_live_when_loaded_unsafely(malicious_ckpt: tuple[Path, Path]) -> None:
    # The control: the same file loaded the unsafe way does run code, so the tests below mean something.
    path, marker = malicious_ckpt
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists()


def test_pickle_refused_without_allow_pickle(malicious_ckpt: tuple[Path, Path]) -> None:
    path, marker = malicious_ckpt
    with pytest.raises(InputError, match="--allow-pickle") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_malicious_pickle_refused_even_when_allowed(malicious_ckpt: tuple[Path, Path]) -> None:
    path, marker = malicious_ckpt
    with pytest.raises(InputError) as info:
        read_state_dict(path, allow_pickle=True)
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_raw_pickle_payload_never_runs(tmp_path: Path) -> None:
    # A bare pickle stream (not torch's zip container) with the payload at the top level.
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(MakesFile(marker)))
    for allow in (False, True):
        with pytest.raises(InputError, match="model.pt"):
            read_state_dict(path, allow_pickle=allow)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_legit_pickle_loads_only_when_allowed(tmp_path: Path, weights: dict, suffix: str) -> None:
    path = tmp_path / f"weights{suffix}"
    torch.save(weights, path)
    with pytest.raises(InputError, match="--allow-pickle"):
        read_state_dict(path)
    loaded = read_state_dict(path, allow_pickle=True)
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_a1111_ckpt_is_unwrapped(tmp_path: Path, weights: dict) -> None:
    path = tmp_path / "a1111.ckpt"
    torch.save({"state_dict": weights, "global_step": 470000, "epoch": 6}, path)
    loaded = read_state_dict(path, allow_pickle=True)
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_safetensors_loads(tmp_path: Path, weights: dict) -> None:
    path = tmp_path / "model.safetensors"
    save_file(weights, path)
    loaded = read_state_dict(path)
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)


def _zero_bytes(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _garbage(path: Path) -> Path:
    path.write_bytes(b"this is not a safetensors file, just some bytes" * 10)
    return path


def _bad_header_length(path: Path) -> Path:
    path.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    return path


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("missing.safetensors", lambda p: p, "does not exist"),
        ("empty.safetensors", _zero_bytes, "empty"),
        ("garbage.safetensors", _garbage, "not a valid .safetensors"),
        ("header.safetensors", _bad_header_length, "not a valid .safetensors"),
        ("model.onnx", _garbage, "unknown extension"),
        ("folder.safetensors", lambda p: p.mkdir() or p, "folder"),
    ],
)
def test_bad_files_name_the_path(tmp_path: Path, name: str, make, expected: str) -> None:
    path = make(tmp_path / name)
    with pytest.raises(InputError, match=expected) as info:
        read_state_dict(path, allow_pickle=True)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message


def test_pickle_without_tensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pt"
    torch.save({"global_step": 3}, path)
    with pytest.raises(InputError, match="no tensors"):
        read_state_dict(path, allow_pickle=True)


def test_is_single_file_by_extension() -> None:
    assert is_single_file("a/model.safetensors")
    assert is_single_file("MODEL.CKPT")
    assert is_single_file(Path("x.pth"))
    assert not is_single_file("a/model")
    assert not is_single_file("model.onnx")


def test_a_checkpoint_read_at_a_dtype_equals_the_library_read_then_cast(tmp_path):
    from safetensors.torch import load_file

    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(3, 5, generator=g).half(),
        "b.weight": torch.randn(7, generator=g),
        "c.ids": torch.arange(4),
        "d.empty": torch.zeros(0, 3),
        "e.flag": torch.tensor([True, False]),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    ours = read_state_dict(path, dtype=torch.bfloat16)
    theirs = load_file(str(path))
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        expected = value.to(torch.bfloat16) if value.is_floating_point() else value
        assert ours[key].dtype == expected.dtype and torch.equal(ours[key], expected), key


DAMAGES = {
    "truncated": None,
    "huge header": None,
    "bad offsets": {"w": {"dtype": "F32", "shape": [64, 64], "data_offsets": [0, 8]}},
    # two entries on one region: read twice, it could ask for far more memory than the file holds
    "overlapping": {
        "w": {"dtype": "F32", "shape": [64, 64], "data_offsets": [0, 16384]},
        "v": {"dtype": "F32", "shape": [64, 64], "data_offsets": [0, 16384]},
    },
    "negative shape": {"w": {"dtype": "F32", "shape": [-64, -64], "data_offsets": [0, 16384]}},
    "not an object": [1, 2],
    "unknown dtype": {"w": {"dtype": "F128", "shape": [64, 64], "data_offsets": [0, 16384]}},
    "a list for a dtype": {"w": {"dtype": ["F32"], "shape": [64, 64], "data_offsets": [0, 16384]}},
    "a huge empty shape": {"w": {"dtype": "F32", "shape": [0, 2**70], "data_offsets": [0, 0]}},
    "a shape past int64": {"w": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}},
    "deeply nested": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_safetensors_file_read_at_a_dtype_is_one_sentence(tmp_path, damage):
    import json
    import struct

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(64, 64)}, str(path))
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    if damage == "truncated":
        data = data[:-100]
    elif damage == "huge header":
        data = struct.pack("<Q", 1 << 40) + data[8:]
    else:
        header = DAMAGES[damage]
        text = (header if isinstance(header, str) else json.dumps(header)).encode()
        data = struct.pack("<Q", len(text)) + text + data[8 + length :]
    path.write_bytes(data)
    with pytest.raises(InputError, match=r"is not a valid \.safetensors file"):
        read_state_dict(path, dtype=torch.float32)
