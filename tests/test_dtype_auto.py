"""`--dtype auto`: float16 on CUDA, bfloat16 on CPUs with native bf16 instructions, else float32."""

from __future__ import annotations

import pytest
import torch

import sdlab.loading as loading
from sdlab.errors import InputError


@pytest.fixture
def machine(monkeypatch):
    """Set what the CPU can do; `SDLAB_DTYPE` unset (the test suite pins it to float32)."""
    monkeypatch.delenv("SDLAB_DTYPE", raising=False)

    def has_bf16(value: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: value)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)

    return has_bf16


def test_auto_picks_bfloat16_only_on_cpus_that_run_it_natively(machine):
    cpu = torch.device("cpu")
    machine(True)
    assert loading.cpu_runs_bfloat16()
    assert loading.resolve_dtype("auto", cpu) == torch.bfloat16
    assert loading.resolve_dtype(None, cpu) == torch.bfloat16
    assert loading.resolve_dtype("float32", cpu) == torch.float32  # an explicit choice stands
    assert loading.resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert loading.resolve_dtype("auto", torch.device("mps")) == torch.float32
    machine(False)
    assert loading.resolve_dtype("auto", cpu) == torch.float32


def test_bfloat16_asked_for_on_a_cpu_without_it_is_a_warning(machine, caplog):
    cpu = torch.device("cpu")
    machine(False)
    assert loading.resolve_dtype("bfloat16", cpu) == torch.bfloat16  # the choice stands, with a warning
    assert "runs convolutions hundreds of times slower than float32" in caplog.text
    caplog.clear()
    machine(True)
    assert loading.resolve_dtype("bfloat16", cpu) == torch.bfloat16 and not caplog.text


def test_the_digits_model_loads_in_bfloat16_under_auto_on_such_a_cpu(machine):
    machine(True)
    pipe = loading.load_pipeline(device="cpu")
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.bfloat16}
    result = pipe.generate(["a handwritten digit 4"] * 2, seed=0, num_inference_steps=2)
    assert result.pixels.dtype == torch.float32 and result.pixels.shape == (2, 3, 32, 32)


def test_sdlab_dtype_sets_what_auto_means(machine, monkeypatch):
    machine(True)
    monkeypatch.setenv("SDLAB_DTYPE", "float32")
    assert loading.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setenv("SDLAB_DTYPE", "half")
    with pytest.raises(InputError, match="SDLAB_DTYPE='half' is not a dtype"):
        loading.resolve_dtype("auto", torch.device("cpu"))
