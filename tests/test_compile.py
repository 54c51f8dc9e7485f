"""`--compile`: the UNet and VAE decoder through torch.compile, recorded, replayed, and served.

CI compiles with the "eager" backend (dynamo captures the graphs, no kernels are generated: seconds, not
the minutes inductor takes on a CPU); the kernels' speed and their distance from eager pixels are
measured by scripts/bench_compile.py and scripts/check_cuda.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_pipeline
from PIL import Image

from sdlab.cli.main import main

ARGS = dict(num_inference_steps=3, guidance_scale=5.0, seed=0, height=32, width=32)


@pytest.fixture
def eager_backend(monkeypatch):
    monkeypatch.setenv("SDLAB_COMPILE_BACKEND", "eager")


def test_a_compiled_pipeline_gives_the_eager_pixels_and_keeps_the_deep_cache(eager_backend):
    eager = tiny_pipeline()
    compiled = tiny_pipeline().compile()
    assert compiled.compiled == "eager" and eager.compiled is None
    for extra in ({}, {"deep_cache": 2}, {"guidance_interval": (0.0, 5.0)}):  # 2 batch sizes: 2 graphs
        a, b = eager.generate("a cat", **ARGS, **extra), compiled.generate("a cat", **ARGS, **extra)
        assert torch.allclose(a.pixels, b.pixels, atol=1e-5), extra


def test_the_cli_records_compile_and_replay_compiles_again(eager_backend, tiny_dir, tmp_path, capsys):
    out = tmp_path / "a.png"
    common = ["--model", str(tiny_dir), "--steps", "3", "--seed", "1"]
    assert main(["generate", "a cat", *common, "--compile", "-o", str(out)]) == 0
    with Image.open(out) as image:
        assert json.loads(image.text["sdlab"])["compile"] == "eager"
        made = np.asarray(image)
    assert main(["replay", str(out), "-o", str(tmp_path / "b.png")]) == 0
    assert "identical pixels" in capsys.readouterr().out
    assert main(["generate", "a cat", *common, "-o", str(tmp_path / "c.png")]) == 0
    with Image.open(tmp_path / "c.png") as plain:
        assert "compile" not in json.loads(plain.text["sdlab"])
        assert np.abs(np.asarray(plain, dtype=int) - made).max() <= 1


def test_the_server_option_compiles_models_as_they_load(eager_backend, data_dir):
    import requests
    from server_utils import serve

    with serve("--data-dir", str(data_dir)) as url:
        body = {
            "prompt": "a cat",
            "seed": 3,
            "steps": 3,
            "override_settings": {"sd_model_checkpoint": "tiny"},
        }
        plain = requests.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120).json()
        assert requests.get(f"{url}/sdapi/v1/options", timeout=30).json()["sdlab_compile"] is False
        set_on = requests.post(f"{url}/sdapi/v1/options", json={"sdlab_compile": True}, timeout=60)
        assert set_on.status_code == 200 and set_on.json()["ignored"] == {}
        assert requests.get(f"{url}/sdapi/v1/options", timeout=30).json()["sdlab_compile"] is True
        compiled = requests.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120).json()
        recipe = json.loads(_chunks(compiled["images"][0])["sdlab"])
        assert recipe["compile"] == "eager" and "compile" not in json.loads(
            _chunks(plain["images"][0])["sdlab"]
        )
        bad = requests.post(f"{url}/sdapi/v1/options", json={"sdlab_compile": "yes"}, timeout=30)
        assert bad.status_code == 422 and "sdlab_compile must be true or false" in bad.json()["detail"]


def _chunks(b64: str) -> dict:
    import base64

    from sdlab.images import read_png_text

    return read_png_text(base64.b64decode(b64))
