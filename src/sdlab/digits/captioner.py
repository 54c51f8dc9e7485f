"""The digits captioner: what an image-captioning model does for photos, done for digits.

A `DigitClassifier` reads the digit; `attributes.measure` reads its style; words and templates turn
both into a caption such as "a thick handwritten digit 7, slanted to the right". Training draws a new
phrasing every time (numeral or word, several templates, attributes sometimes left out) so that the
text encoder learns that "7" and "seven" mean the same and that an attribute is optional.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from sdlab.digits.attributes import measure
from sdlab.digits.classifier import DigitClassifier

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
THIN, THICK = 2.45, 3.25  # stroke width (px): about the 30th and 75th percentiles of MNIST
LEFT, RIGHT = -0.08, 0.38  # slant: clearly leaning left / right
SMALL = 17  # ink height (px) below which a digit reads as small (MNIST digits are ~20 px tall)
TEMPLATES = [
    "a {style}handwritten digit {digit}{slant}",
    "a {style}handwritten {digit}{slant}",
    "the {style}digit {digit}{slant}",
    "a {style}number {digit}{slant}",
    "{digit}, a {style}handwritten digit{slant}",
]


@dataclass
class DigitFacts:
    """What the captioner saw in one image."""

    digit: int
    thickness: str | None  # "thin", "thick" or None (ordinary)
    slant: str | None  # "left", "right" or None (upright)
    small: bool

    def caption(self, rng: random.Random | None = None, keep: float = 1.0) -> str:
        """A caption; with `rng`, a random phrasing in which each attribute survives with probability `keep`."""
        pick = (lambda p: rng.random() < p) if rng else (lambda p: True)
        digit = rng.choice([str(self.digit), WORDS[self.digit]]) if rng else str(self.digit)
        template = rng.choice(TEMPLATES) if rng else TEMPLATES[0]
        style = ""
        if self.small and pick(keep):
            style += "small "
        if self.thickness and pick(keep):
            style += f"{self.thickness} "
        slant = f", slanted to the {self.slant}" if self.slant and pick(keep) else ""
        return template.format(style=style, digit=digit, slant=slant)


def facts_from(digits: np.ndarray | torch.Tensor, images: np.ndarray) -> list[DigitFacts]:
    """Facts from known digit labels and (N, 28, 28) images (uint8 or [0, 1])."""
    style = measure(images)
    facts = []
    for i, digit in enumerate(np.asarray(digits)):
        thick = "thin" if style.thickness[i] < THIN else "thick" if style.thickness[i] > THICK else None
        slant = "left" if style.slant[i] < LEFT else "right" if style.slant[i] > RIGHT else None
        facts.append(DigitFacts(int(digit), thick, slant, bool(0 < style.size[i] < SMALL)))
    return facts


class DigitsCaptioner:
    """`caption(images) -> list[str]`: the interface every sdlab captioner implements (BLIP's too)."""

    name = "digits"

    def __init__(self, classifier: DigitClassifier) -> None:
        self.classifier = classifier.eval()

    @classmethod
    def load(cls, path: str | Path) -> DigitsCaptioner:
        return cls(DigitClassifier.load(path))

    def facts(self, images: list[PIL.Image.Image] | np.ndarray) -> list[DigitFacts]:
        gray = _as_gray28(images)
        digits = self.classifier.predict(torch.from_numpy(gray))
        return facts_from(digits.numpy(), gray)

    def caption(self, images: list[PIL.Image.Image] | np.ndarray) -> list[str]:
        return [f.caption() for f in self.facts(images)]


def _as_gray28(images: list[PIL.Image.Image] | np.ndarray) -> np.ndarray:
    """Any digit pictures -> (N, 28, 28) float32 in [0, 1], white ink on black (inverted if paper is white)."""
    if isinstance(images, np.ndarray):
        x = images.astype(np.float32)
        return x / 255 if x.max() > 1.5 else x
    out = []
    for image in images:
        g = np.asarray(image.convert("L"), dtype=np.float32) / 255
        if g.shape == (32, 32):
            g = g[2:-2, 2:-2]
        elif g.shape != (28, 28):
            g = np.asarray(image.convert("L").resize((28, 28), PIL.Image.BILINEAR), dtype=np.float32) / 255
        if np.median(g) > 0.5:  # dark ink on light paper
            g = 1 - g
        out.append(g)
    return np.stack(out)
