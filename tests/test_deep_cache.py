"""DeepCache (Ma et al. 2024): the shallow path reuses the deep features of the last full UNet pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdlab.errors import InputError
from sdlab.sampling.conditioning import Conditioning
from sdlab.sampling.deep_cache import DeepCache
from sdlab.sampling.loop import generate
from sdlab.sampling.params import SamplingParams

PROMPT = "a red cube on a table"


def test_a_cached_step_on_the_same_input_is_the_full_pass(tiny):
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g)
    t = torch.tensor(300)
    cache = DeepCache(tiny.unet, 3)
    with torch.no_grad():
        full = cache(0, x, t, Conditioning(text))
        cached = cache(1, x, t, Conditioning(text))  # shallow path on the features kept a moment ago
        other = cache(2, x + 1, t, Conditioning(text))
        exact = tiny.unet(x + 1, t, encoder_hidden_states=text).sample
    assert torch.allclose(cached, full, atol=1e-5)
    assert not torch.allclose(other, exact, atol=1e-3)  # deep features of another input: an approximation
    assert (cache.full_passes, cache.cached_passes) == (1, 2)
    assert not tiny.unet.up_blocks[-1].resnets[-1]._forward_pre_hooks  # the UNet is left as it was


def test_generate_with_deep_cache_runs_the_unet_whole_every_n_steps(tiny, monkeypatch):
    kwargs = dict(num_inference_steps=6, guidance_scale=5.0, seed=1, height=32, width=32, scheduler="ddim")
    plain = generate(tiny, PROMPT, **kwargs)
    assert torch.equal(generate(tiny, PROMPT, **kwargs, deep_cache=1).pixels, plain.pixels)  # 1: off
    calls = []
    real = DeepCache._shallow
    monkeypatch.setattr(DeepCache, "_shallow", lambda self, *a: calls.append(1) or real(self, *a))
    cached = generate(tiny, PROMPT, **kwargs, deep_cache=3)
    assert len(calls) == 4  # steps 1, 2, 4, 5 of 0..5
    assert cached.settings["deep_cache"] == 3 and plain.settings["deep_cache"] == 1
    assert not torch.equal(cached.pixels, plain.pixels)
    other_seed = generate(tiny, PROMPT, **{**kwargs, "seed": 2})
    # nearer the exact result than another seed's image is: an approximation of the same picture
    assert (cached.pixels - plain.pixels).abs().mean() < (other_seed.pixels - plain.pixels).abs().mean() / 2


def test_deep_cache_runs_whole_where_the_guidance_interval_changes_the_batch(tiny, monkeypatch):
    calls = []
    real = DeepCache._shallow

    def shallow(self, kept, x, *args):
        calls.append((len(kept), len(x)))
        return real(self, kept, x, *args)

    monkeypatch.setattr(DeepCache, "_shallow", shallow)
    result = generate(tiny, PROMPT, num_inference_steps=8, guidance_scale=5.0, guidance_interval=(0.0, 3.0),
                      scheduler="euler", seed=0, height=32, width=32, deep_cache=2)  # fmt: skip
    assert 8 < result.settings["unet_evaluations"] < 16  # guided and unguided steps both ran
    assert calls and all(kept == now for kept, now in calls)  # features only of a batch of the same size
    assert {now for _, now in calls} == {1, 2}  # cached steps on both sides of the interval's edge


def test_the_shallow_path_covers_a_last_up_block_with_cross_attention():
    from sdlab.loading import load_pipeline

    unet = load_pipeline(device="cpu", dtype="float32").unet  # the digits UNet ends in CrossAttnUpBlock2D
    assert unet.up_blocks[-1].attentions
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 77, 64, generator=g)
    cache = DeepCache(unet, 2)
    with torch.no_grad():
        full = cache(0, x, torch.tensor(600), Conditioning(text))
        cached = cache(1, x, torch.tensor(600), Conditioning(text))
    assert cache.cached_passes == 1 and torch.allclose(cached, full, atol=1e-5)


def test_the_shallow_path_adds_sdxls_pooled_text_and_size_embedding(tiny_sdxl):
    """On the same input, a cached SDXL step equals the full pass only if the shallow path's time
    embedding carries the added (pooled text + size ids) embedding as the UNet's does."""
    g = torch.Generator().manual_seed(0)
    text, pooled = torch.randn(2, 77, 80, generator=g), torch.randn(2, 32, generator=g)
    ids = torch.tensor([[32.0, 32, 0, 0, 32, 32], [64, 48, 4, 2, 32, 32]])
    x = torch.randn(2, 4, 16, 16, generator=g)
    cache = DeepCache(tiny_sdxl.unet, 2)
    with torch.no_grad():
        full = cache(0, x, torch.tensor(500), Conditioning(text, pooled, ids))
        cached = cache(1, x, torch.tensor(500), Conditioning(text, pooled, ids))
        other_sizes = cache(1, x, torch.tensor(500), Conditioning(text, pooled, ids.flip(0)))
    assert cache.cached_passes == 2 and torch.allclose(cached, full, atol=1e-5)
    assert not torch.allclose(other_sizes, full, atol=1e-4)  # the size ids reach the shallow path


def test_a_bad_interval_is_one_sentence(tiny):
    with pytest.raises(InputError, match="deep cache interval must be a positive integer"):
        DeepCache(tiny.unet, 0)


def test_the_model_may_recommend_deep_cache_the_png_records_it_and_replay_repeats_it(tiny, tmp_path, capsys):
    from PIL import Image

    from sdlab.cli.main import main
    from sdlab.loading.folder import save_folder
    from sdlab.metadata import parse_parameters
    from sdlab.outputs import read_recipe

    tiny.recommended = SamplingParams(deep_cache=2, scheduler="ddim", num_inference_steps=4)
    try:
        model = save_folder(tiny, tmp_path / "model")
    finally:
        tiny.recommended = SamplingParams()
    common = ["--model", str(model), "--steps", "4", "--seed", "2"]
    assert main(["generate", PROMPT, *common, "-o", str(tmp_path / "cached.png")]) == 0
    assert main(["generate", PROMPT, *common, "--deep-cache", "1", "-o", str(tmp_path / "whole.png")]) == 0
    with Image.open(tmp_path / "cached.png") as image:
        _, _, settings = parse_parameters(image.text["parameters"])
        cached = np.asarray(image)
    assert settings["Deep cache"] == "2" and read_recipe(tmp_path / "cached.png")["deep_cache"] == 2
    assert read_recipe(tmp_path / "whole.png")["deep_cache"] == 1  # off: replays off, whatever the model says
    assert not np.array_equal(cached, np.asarray(Image.open(tmp_path / "whole.png")))
    capsys.readouterr()
    assert main(["replay", str(tmp_path / "cached.png"), "--model", str(model)]) == 0
    assert main(["replay", str(tmp_path / "whole.png"), "--model", str(model)]) == 0
    assert capsys.readouterr().out.count("identical pixels") == 2
    # a bad value: one sentence, exit 2
    assert main(["generate", PROMPT, *common, "--deep-cache", "0", "-o", str(tmp_path / "bad.png")]) == 2
    assert "deep_cache (--deep-cache) must be an integer from 1" in capsys.readouterr().err


def test_turning_a_recommended_cache_off_is_recorded_and_infotexts_carry_it_both_ways(tiny, tmp_path):
    from sdlab.outputs import infotext, read_recipe, recipe
    from sdlab.service.prompts_file import parse_line

    kwargs = dict(num_inference_steps=4, seed=0, height=32, width=32)
    silent = generate(tiny, PROMPT, **kwargs)  # no recommendation, off: the infotext does not say it
    assert "Deep cache" not in infotext(
        {**recipe(silent, 0, tiny), "model_hash": "0", "sdlab_version": "x"}, tiny
    )
    tiny.recommended = SamplingParams(deep_cache=2, num_inference_steps=4)
    try:
        off = generate(tiny, PROMPT, **kwargs, deep_cache=1)
        default = generate(tiny, PROMPT, **kwargs)
        text = infotext({**recipe(off, 0, tiny), "model_hash": "0", "sdlab_version": "x"}, tiny)
    finally:
        tiny.recommended = SamplingParams()
    assert off.settings["deep_cache"] == 1 and default.settings["deep_cache"] == 2
    assert "Deep cache: 1" in text  # an A1111 client re-posting it turns the cache off too
    # an A1111-style PNG (parameters only) replays with the cache it names, and with none when silent
    for value, expected in (("Deep cache: 3, ", 3), ("", 1)):
        from PIL import Image
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text(
            "parameters",
            f"a cat\nSteps: 4, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 32x32, {value}Model: x",
        )
        Image.new("RGB", (32, 32)).save(tmp_path / "a.png", pnginfo=info)
        assert read_recipe(tmp_path / "a.png")["deep_cache"] == expected
    assert parse_line('--prompt "a cat" --deep_cache 3', "line 1")["deep_cache"] == 3
    with pytest.raises(InputError, match=r"deep_cache \(--deep-cache\) must be an integer"):
        generate(tiny, PROMPT, **kwargs, deep_cache=True)


def test_eval_refuses_a_deep_cache_below_one(tiny_dir, capsys):
    from sdlab.cli.main import main

    assert main(["eval", "--model", str(tiny_dir), "--deep-cache", "0"]) == 2
    assert "deep_cache (--deep-cache) must be an integer from 1" in capsys.readouterr().err
