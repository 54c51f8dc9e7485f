"""`--guide-digit D`: steer sampling towards digit D with the evaluation classifier's gradient.

The lesson notes' picture of diffusion: a network that says how digit-like an image is also says, through its
gradient, how to change every pixel to make it more so. Here that network is the digit classifier and
the score is its log-probability of D on each step's predicted clean image (see
`sdlab.sampling.gradient_guidance`). It works without any prompt.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdlab.digits.classifier import EVAL_CLASSIFIER, DigitClassifier
from sdlab.digits.data import to_gray
from sdlab.sampling.gradient_guidance import GradientGuide
from sdlab.service.request import DEFAULT_GUIDE_SCALE, check_guide


def digit_guide(
    digit: int, scale: float = DEFAULT_GUIDE_SCALE, classifier: str | Path = EVAL_CLASSIFIER
) -> GradientGuide:
    """A guide that raises log p(digit | image) under the classifier at `classifier`."""
    check_guide(digit, scale)
    model = DigitClassifier.load(classifier).requires_grad_(False)

    def score(pixels: torch.Tensor) -> torch.Tensor:
        model.to(pixels.device)
        return torch.log_softmax(model(to_gray(pixels)), dim=-1)[:, digit]

    return GradientGuide(score, float(scale), {"guide_digit": digit, "guide_scale": float(scale)})
