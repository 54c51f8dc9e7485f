"""The measures of the teaching demonstrations, on real digits with known transformations."""

from __future__ import annotations

import numpy as np
from PIL import Image

from sdlab.digits.data import train_test_split
from sdlab.evaluation.digits import Judge
from sdlab.evaluation.teaching import DOMAINS, cosine_to, is_italic, shear, unshear


def test_italic_digits_are_detected_and_read_back_once_unsheared():
    _, test = train_test_split()
    digits, labels = test.images[::5], test.labels[::5]  # 200 held-out digits
    plain = digits.astype(np.float32) / 255
    italic = shear(plain)
    # MNIST's own slants vary, so a quarter of sheared digits still measure below the threshold
    assert is_italic(italic).mean() > 0.7 and is_italic(plain).mean() < 0.2
    judge = Judge.load()
    assert (judge.predict(unshear(italic)) == labels).mean() > 0.95
    assert (judge.predict(unshear(italic)) == labels).mean() > (judge.predict(italic) == labels).mean()


def test_underlined_digits_are_detected_and_read_back_without_the_line():
    _, test = train_test_split()
    digits, labels = test.images[::5], test.labels[::5]
    plain = digits.astype(np.float32) / 255
    domain = DOMAINS["underline"]
    underlined = domain.make(plain)
    assert domain.detect(underlined).all() and domain.detect(plain).mean() < 0.02
    judge = Judge.load()
    assert (judge.predict(domain.restore(underlined)) == labels).mean() > 0.97
    # the line is what the restoring removes: on plain digits it changes (almost) nothing
    assert (judge.predict(domain.restore(plain)) == judge.predict(plain)).mean() > 0.97


def test_feature_similarity_prefers_the_same_digit():
    _, test = train_test_split()
    judge = Judge.load()
    fours, sevens = test.images[test.labels == 4] / 255.0, test.images[test.labels == 7] / 255.0
    assert cosine_to(judge, fours[50:], fours[:50]) > cosine_to(judge, sevens, fours[:50]) + 0.1


def test_size_normalisation_lets_the_classifier_read_tiny_digits():
    from sdlab.evaluation.teaching import normalize_size

    _, test = train_test_split()
    digits, labels = test.images[::5], test.labels[::5]
    tiny = np.zeros((len(digits), 28, 28), np.float32)
    for i, d in enumerate(digits):
        tiny[i, 7:21, 7:21] = np.asarray(Image.fromarray(d).resize((14, 14), Image.Resampling.LANCZOS)) / 255
    judge = Judge.load()
    assert (judge.predict(normalize_size(tiny)) == labels).mean() > 0.9
    assert (judge.predict(normalize_size(tiny)) == labels).mean() > (judge.predict(tiny) == labels).mean()
