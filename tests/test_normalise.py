"""MNIST's normalisation (LeCun et al. 1998): the ink box scaled to 20 pixels, the centre of mass at the centre."""

import torch

from sdlab.digits.data import train_test_split
from sdlab.digits.normalise import mnist_normalise


def _box_and_centre(gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ink = gray > 0.3
    index = torch.arange(gray.shape[-1])
    rows, cols = ink.any(2), ink.any(1)
    span = lambda any_ink: (torch.where(any_ink, index, -1).max(1).values  # noqa: E731
                            - torch.where(any_ink, index, 99).min(1).values + 1)  # fmt: skip
    mass = gray.sum((1, 2))
    cy = (gray.sum(2) * index).sum(1) / mass
    cx = (gray.sum(1) * index).sum(1) / mass
    return torch.maximum(span(rows), span(cols)).float(), cy, cx


def test_a_digit_drawn_small_off_centre_comes_back_to_mnist_size_and_place():
    _, test = train_test_split()
    x = torch.from_numpy(test.images[:100]).float() / 255
    small = torch.nn.functional.interpolate(x[:, None], size=12, mode="bilinear", antialias=True)[:, 0]
    shifted = torch.zeros_like(x)
    shifted[:, 2:14, 15:27] = small
    box, cy, cx = _box_and_centre(mnist_normalise(shifted))
    assert box.mean() > 18.5 and (box - 20).abs().max() <= 3
    assert torch.allclose(cy, torch.full_like(cy, 14.0), atol=0.3)
    assert torch.allclose(cx, torch.full_like(cx, 14.0), atol=0.3)
    before, _, _ = _box_and_centre(shifted)
    assert before.mean() < 13


def test_mnist_digits_are_already_normalised_and_blank_images_pass_through():
    _, test = train_test_split()
    x = torch.from_numpy(test.images[:100]).float() / 255
    out = mnist_normalise(x)
    assert (out - x).abs().mean() < 0.05  # only the resampling's blur
    blank = torch.zeros(2, 28, 28)
    assert torch.equal(mnist_normalise(blank), blank)
