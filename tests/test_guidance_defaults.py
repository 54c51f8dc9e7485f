"""Gradient guidance and a model's own sampling defaults, on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from sdlab.errors import InputError
from sdlab.loading import load_pipeline
from sdlab.loading.folder import save_folder
from sdlab.sampling.gradient_guidance import GradientGuide, alpha_bar_at
from sdlab.sampling.params import SamplingParams


def brightness(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.mean(dim=(1, 2, 3))


@pytest.mark.parametrize("scheduler", ["dpmpp_2m", "euler", "ddim"])
def test_gradient_guidance_moves_images_along_the_score(tiny, scheduler):
    kwargs = dict(
        num_inference_steps=4, guidance_scale=1.0, seed=3, num_images_per_prompt=2, scheduler=scheduler
    )
    plain = tiny.generate("a cat", **kwargs).pixels
    brighter = tiny.generate("a cat", guide=GradientGuide(brightness, 30.0), **kwargs).pixels
    darker = tiny.generate("a cat", guide=GradientGuide(brightness, -30.0), **kwargs).pixels
    assert (brightness(darker) < brightness(plain)).all() and (brightness(plain) < brightness(brighter)).all()
    # scale 0 changes nothing, and guided sampling is deterministic
    zero = tiny.generate("a cat", guide=GradientGuide(brightness, 0.0), **kwargs).pixels
    assert torch.allclose(zero, plain, atol=1e-5)
    again = tiny.generate("a cat", guide=GradientGuide(brightness, 30.0), **kwargs).pixels
    assert torch.equal(again, brighter)


def test_alpha_bar_interpolates_between_timesteps():
    a = torch.tensor([1.0, 0.5, 0.25])
    assert alpha_bar_at(a, 1) == 0.5 and alpha_bar_at(a, 1.5) == pytest.approx(0.375)
    assert alpha_bar_at(a, torch.tensor(7.0)) == 0.25


def test_a_models_sampling_defaults_apply_unless_overridden(tiny, tmp_path):
    tiny.recommended = SamplingParams(guidance_scale=2.5, num_inference_steps=3)
    try:
        folder = save_folder(tiny, tmp_path / "m")
    finally:
        tiny.recommended = SamplingParams()
    assert json.loads((folder / "sdlab.json").read_text()) == {
        "sampling": {"guidance_scale": 2.5, "num_inference_steps": 3}
    }
    pipe = load_pipeline(folder, device="cpu")
    calls = []
    result = pipe.generate("a cat", seed=0, scheduler="ddim", callback=lambda *a: calls.append(a))
    assert result.settings["guidance_scale"] == 2.5 and len(calls) == 3
    assert (
        pipe.generate("a cat", seed=0, guidance_scale=7.0, num_inference_steps=2).settings["guidance_scale"]
        == 7.0
    )
    (folder / "sdlab.json").write_text('{"sampling": {"guidance_scale": "high"}}')
    with pytest.raises(InputError, match="guidance_scale"):
        load_pipeline(folder, device="cpu")
