"""The lab: step-by-step predictions, guidance made visible, attention maps, X/Y plots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdlab.errors import InputError
from sdlab.lab.attention import attention_maps, word_tokens
from sdlab.lab.steps import watch
from sdlab.lab.xyplot import parse_values, prompted_digit, xy_grid
from sdlab.sampling.loop import generate
from sdlab.service import GenerationRequest, ModelRegistry


@pytest.fixture(scope="module")
def registry():
    return ModelRegistry()


def test_each_step_reports_both_branches_and_the_guided_prediction(tiny):
    seen = []
    generate(
        tiny,
        "a cat",
        num_inference_steps=4,
        guidance_scale=5.0,
        scheduler="ddim",
        height=32,
        width=32,
        seed=0,
        observe=seen.append,
    )
    assert [s.step for s in seen] == [0, 1, 2, 3]
    for s in seen:
        # x0 is linear in the prediction: guidance in noise space is guidance in x0 space
        mixed = s.x0(s.noise_uncond) + 5.0 * (s.x0(s.noise_cond) - s.x0(s.noise_uncond))
        assert torch.allclose(s.x0(), mixed, atol=1e-4)
    assert not torch.allclose(seen[0].x0(seen[0].noise_uncond), seen[0].x0(seen[0].noise_cond))


@pytest.mark.parametrize("scheduler", ["euler", "dpmpp_2m", "ddim"])
def test_x0_is_the_clean_latent_the_scheduler_lands_on(tiny, scheduler):
    """At the last step a first-order sampler's next latent is its predicted x0 (sigma -> 0), so the
    x0 sdlab derives in variance-preserving terms must equal it: a wrong alpha-bar or an unscaled
    sample (sigma-space schedulers such as Euler) would not."""
    seen = []
    result = generate(
        tiny,
        "a cat",
        num_inference_steps=5,
        scheduler=scheduler,
        height=32,
        width=32,
        seed=1,
        observe=seen.append,
    )
    # DDIM's last step lands at alphas_cumprod[0] = 0.99915, not 1: within a fraction of a percent
    tolerance = dict(rtol=5e-3, atol=5e-2) if scheduler == "ddim" else dict(rtol=0, atol=1e-4)
    assert torch.allclose(seen[-1].x0(), result.latents, **tolerance)


def test_attention_maps_land_where_the_probabilities_point_on_non_square_latents():
    from sdlab.lab.attention import CrossAttentionStore, layer_size

    assert layer_size((33, 48), 17 * 24) == (17, 24)  # 33 -> 17 -> 9: halves rounding up, as the UNet
    store = CrossAttentionStore((12, 8))
    probs = torch.zeros(2 * 4, 6 * 4, 3)  # [uncond, cond] x 4 heads, a 6x4 level, 3 tokens
    probs[4:, 1 * 4 + 3, 2] = 1.0  # the conditional branch: token 2 looks at row 1, column 3
    store.add(probs, heads=4)
    heat = store.heat((12, 8))[2]
    row, column = divmod(int(heat.argmax()), 8)
    assert (row // 2, column // 2) == (1, 3) and float(store.heat((12, 8))[0].abs().max()) == 0


def test_watch_keeps_a_frame_per_step_and_the_guidance_split(registry):
    seen = watch(
        registry,
        GenerationRequest("a handwritten digit 3", seed=2),  # the model's steps, CFG and interval
        split_step=3,
        attention=True,
    )
    steps = registry.cached("digits").recommended.num_inference_steps  # loaded by watch
    assert [f.step for f in seen.frames] == list(range(1, steps + 1))
    # the model guides only at low noise (its recommended interval): the split shows the nearest guided step
    guided = [f.step for f in seen.frames if f.guided]
    assert guided and 1 not in guided and seen.split.step == min(guided, key=lambda s: abs(s - 3))
    assert seen.frames[0].x0.size == (32, 32)
    everywhere = watch(registry, GenerationRequest("a handwritten digit 3", num_inference_steps=6, guidance_scale=4.0,
                                                   seed=2, guidance_interval=(0.0, None)), split_step=3)  # fmt: skip
    assert all(f.guided for f in everywhere.frames) and everywhere.split.step == 3
    assert seen.digit_probability is None
    assert [w.word for w in seen.attention] == ["a", "handwritten", "digit", "3"]
    last = np.asarray(seen.frames[-1].latents, dtype=float)
    assert np.abs(last - np.asarray(seen.image.image, dtype=float)).mean() < 2  # x_T decoded is the image
    x0 = np.asarray(seen.frames[-1].x0, dtype=float)
    assert np.abs(x0 - np.asarray(seen.image.image, dtype=float)).mean() < 8  # and so, nearly, is the last x0


def test_gradient_guidance_raises_the_wanted_digit_step_by_step(registry):
    request = GenerationRequest("", num_inference_steps=10, guidance_scale=1.0, guide_digit=3, seed=1)
    probability = watch(registry, request).digit_probability
    assert len(probability) == 10 and probability[-1] > 0.9 and probability[-1] > probability[0]


def test_attention_puts_the_thickness_word_on_the_stroke(registry):
    """DAAM on the digits model: "thick" (a word about the stroke's width) concentrates on the stroke."""
    for seed in range(3):
        maps = attention_maps(
            registry, GenerationRequest("a thick handwritten digit seven", num_inference_steps=20, seed=seed)
        )
        stroke = np.asarray(maps.image.image.convert("L")) > 127
        ratio = {w.word: w.heat[stroke].mean() / w.heat[~stroke].mean() for w in maps.words}
        assert list(ratio) == ["a", "thick", "handwritten", "digit", "seven"]
        assert max(ratio, key=ratio.get) == "thick" and ratio["thick"] > 1.15, ratio


def test_words_map_to_their_tokens(tiny):
    words = word_tokens(tiny.tokenizer, "a (thick:1.3) handwritten digit 7")
    assert [w for w, _ in words] == ["a", "thick", "handwritten", "digit", "7"]
    assert [p for _, p in words] == [[1], [2], [3], [4], [5]]


def test_xy_values_and_the_digit_verdict(registry):
    assert parse_values("Steps", "5-15 (+5), 30") == [5, 10, 15, 30]
    assert parse_values("CFG scale", "1, 1.5") == [1.0, 1.5]
    assert parse_values("Sampler", "Euler a, DPM++ 2M Karras") == ["euler_a", "dpmpp_2m_karras"]
    with pytest.raises(InputError, match="'x' is not a int"):
        parse_values("Steps", "5, x")
    assert (prompted_digit("a handwritten digit 7"), prompted_digit("a seven"), prompted_digit("a cat")) == (
        7,
        7,
        None,
    )
    base = GenerationRequest("a handwritten digit 2", num_inference_steps=5, num_images_per_prompt=2, seed=0)
    plot = xy_grid(registry, base, "Prompt S/R", ["2", "5"], "Seed", [0, 1])
    assert [[len(c) for c in row] for row in plot.cells] == [[2, 2], [2, 2]]
    assert [[r["prompt"] for r in (plot.cells[0][c][0].recipe,)] for c in range(2)] == [
        ["a handwritten digit 2"],
        ["a handwritten digit 5"],
    ]
    assert all(a is not None and a >= 0.5 for row in plot.accuracy for a in row)
    with pytest.raises(InputError, match="must appear in the prompt"):
        xy_grid(registry, base, "Prompt S/R", ["9", "5"])
