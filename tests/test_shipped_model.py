"""The digits model that ships inside sdlab, and the judges that measure it."""

from __future__ import annotations

import numpy as np
import pytest

from sdlab.digits.data import to_gray, train_test_split
from sdlab.evaluation.digits import JUDGES, Judge
from sdlab.loading import DEFAULT_MODEL, load_pipeline


@pytest.fixture(scope="module")
def judge() -> Judge:
    return Judge.load()


@pytest.fixture(scope="module", params=list(JUDGES))
def each_judge(request) -> Judge:
    return Judge.load(request.param)


@pytest.fixture(scope="module")
def digits():
    return load_pipeline()


def test_every_judge_reads_held_out_digits(each_judge):
    _, test = train_test_split()
    assert JUDGES[each_judge.name][1].exists()
    assert (each_judge.predict(test.images / 255.0) == test.labels).mean() > 0.98


def test_fid_is_near_the_floor_for_real_digits_and_far_for_noise(each_judge):
    rng = np.random.default_rng(0)
    floor = each_judge.floor(300)
    noise = rng.random((300, 28, 28)).astype(np.float32)
    blobs = np.zeros((300, 28, 28), np.float32)
    blobs[:, 8:20, 8:20] = 1  # a square is not a digit either
    assert floor < each_judge.fid(noise) / 10 and floor < each_judge.fid(blobs) / 10


def test_the_judges_are_independent_where_it_matters(each_judge):
    """The normalised judge reads a digit drawn small in a corner as it reads the digit itself; the cnn judge,
    reading raw pixels, does not: the two see different things."""
    import torch

    _, test = train_test_split()
    x = torch.from_numpy(test.images[:300]).float() / 255
    small = torch.nn.functional.interpolate(x[:, None], size=14, mode="bilinear", antialias=True)[:, 0]
    corner = torch.zeros_like(x)
    corner[:, 1:15, 1:15] = small
    same = (each_judge.predict(corner.numpy()) == each_judge.predict(x.numpy())).mean()
    if each_judge.name == "normalised":
        assert same > 0.9
    else:
        assert same < 0.7


def test_shipped_model_is_a_diffusers_folder(digits):
    assert (DEFAULT_MODEL / "model_index.json").exists()
    assert digits.default_size == 32 and digits.vae_scale_factor == 4


@pytest.mark.parametrize("digit", [3, 7])
def test_shipped_model_draws_the_prompted_digit(digits, judge, digit):
    result = digits.generate(
        f"a handwritten digit {digit}", num_images_per_prompt=20, seed=0, num_inference_steps=20
    )
    predicted = judge.predict(to_gray(result.pixels).numpy())
    assert (predicted == digit).mean() >= 0.8


def test_seven_and_the_word_seven_mean_the_same(digits, judge):
    result = digits.generate(
        "a handwritten digit seven", num_images_per_prompt=20, seed=0, num_inference_steps=20
    )
    assert (judge.predict(to_gray(result.pixels).numpy()) == 7).mean() >= 0.8
