"""Measures for what a teaching recipe changed, on the digits model, read by the evaluation classifier.

- domain: is a generated digit in the new visual domain (underlined digits; or italic: sheared far right)?
- shape: the measured height and width / height of the digit (textual inversion of "<wide>", "<tiny>");
- subject fidelity and language drift (DreamBooth, Ruiz et al. 2022 in miniature): cosine similarity of
  classifier features to the subject's instance images, for the subject prompt ("fidelity") and for
  the plain class prompt ("drift": the class word moving towards the subject), plus the class
  prompt's accuracy and diversity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from sdlab.digits.attributes import measure
from sdlab.digits.data import to_gray
from sdlab.digits.folders import LINE_COLS, LINE_ROWS, SHEAR, shear, underline
from sdlab.evaluation.digits import Judge
from sdlab.evaluation.metrics import diversity, prompt_accuracy
from sdlab.pipeline import Pipeline

ITALIC = 0.45  # measured slant above which a digit counts as italic
UNDERLINED = 0.3  # mean brightness of the underline's place above which a digit counts as underlined


@dataclass(frozen=True)
class Domain:
    """A visual domain the digits model never saw: how to make it, recognise it, and read a digit drawn in it."""

    name: str
    make: Callable[[np.ndarray], np.ndarray]  # (N, 28, 28) in [0, 1] -> the same digits in the domain
    detect: Callable[[np.ndarray], np.ndarray]  # (N, 28, 28) -> bool, True where a digit is in the domain
    restore: Callable[[np.ndarray], np.ndarray]  # how the classifier reads a digit drawn in the domain


def is_underlined(gray: np.ndarray, threshold: float = UNDERLINED) -> np.ndarray:
    """True where a bright line lies under the digit (none of the 5,000 MNIST digits passes)."""
    return gray[:, LINE_ROWS, LINE_COLS].mean(axis=(1, 2)) > threshold


def remove_underline(gray: np.ndarray) -> np.ndarray:
    out = np.array(gray, copy=True)
    out[:, LINE_ROWS.start - 1 :] = 0.0
    return out


def is_italic(gray: np.ndarray, threshold: float = ITALIC) -> np.ndarray:
    """True where the digit leans far to the right (one real digit in seven passes 0.45)."""
    return measure(gray).slant > threshold


def unshear(gray: np.ndarray, k: float = SHEAR) -> np.ndarray:
    """Undo a horizontal shear x' = x + k * (y - centre): how the classifier reads italic digits."""
    h = gray.shape[1]
    out = np.empty_like(gray)
    for i, image in enumerate(gray):
        # output (r, c) takes input (r, c - k * (r - centre)): the inverse of the forward shear
        matrix = np.array([[1.0, 0.0], [-k, 1.0]])
        out[i] = ndimage.affine_transform(image, matrix, offset=(0.0, k * (h / 2)), order=1)
    return out


DOMAINS = {
    # the captioner has no word for an underline, so captions stay plain and the whole model has to move
    "underline": Domain("underlined", underline, is_underlined, remove_underline),
    # the captioner names this one ("slanted to the right"), so the look binds to those words
    "italic": Domain("italic", shear, is_italic, unshear),
}


def generate_gray(
    pipe: Pipeline, prompts: list[str], seed: int = 0, batch: int = 100, **kwargs
) -> np.ndarray:
    """(N, 28, 28) in [0, 1] for the prompts, image i with seed `seed + i`."""
    out = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        result = pipe.generate(chunk, seed=list(range(seed + start, seed + start + len(chunk))), **kwargs)
        out.append(to_gray(result.pixels).numpy())
    return np.concatenate(out)


def domain_report(pipe: Pipeline, judge: Judge, domain: Domain, per_digit: int = 20, **kwargs) -> dict:
    """Plain digit prompts: the share drawn in the domain, and accuracy (digits in the domain read restored)."""
    prompts = [f"a handwritten digit {d}" for d in range(10) for _ in range(per_digit)]
    wanted = np.repeat(np.arange(10), per_digit)
    gray = generate_gray(pipe, prompts, **kwargs)
    inside = domain.detect(gray)
    readable = np.where(inside[:, None, None], domain.restore(gray), gray)
    return {
        "images": len(gray),
        "domain_share": float(inside.mean()),
        "prompt_accuracy": prompt_accuracy(judge.predict(readable), wanted),
    }


def normalize_size(gray: np.ndarray, box: int = 20) -> np.ndarray:
    """Each digit cropped to its ink and scaled to fit a box x box square, centred: MNIST's own preprocessing,
    so that the classifier reads a tiny digit's identity as well as a normal one's."""
    out = np.zeros_like(gray)
    for i, image in enumerate(gray):
        rows, cols = np.flatnonzero(image.max(1) > 0.2), np.flatnonzero(image.max(0) > 0.2)
        if not len(rows):
            continue
        crop = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        f = box / max(crop.shape)
        h, w = max(1, round(crop.shape[0] * f)), max(1, round(crop.shape[1] * f))
        resized = np.asarray(
            Image.fromarray(crop.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR)
        )
        top, left = (28 - h) // 2, (28 - w) // 2
        out[i, top : top + h, left : left + w] = resized
    return out.clip(0, 1)


def aspect(gray: np.ndarray, ink: float = 0.3) -> np.ndarray:
    """Width / height of each digit's ink (0 for an empty image): MNIST's digits average about 0.8."""
    out = np.zeros(len(gray))
    for i, image in enumerate(gray):
        rows, cols = np.flatnonzero(image.max(1) > ink), np.flatnonzero(image.max(0) > ink)
        if len(rows):
            out[i] = (cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1)
    return out


def shape_report(
    pipe: Pipeline, judge: Judge, template: str, digits=range(10), per_digit: int = 20, **kwargs
) -> dict:
    """Mean measured height and width / height of the digits drawn for `template.format(d=D)`, and accuracy."""
    prompts = [template.format(d=d) for d in digits for _ in range(per_digit)]
    wanted = np.repeat(np.asarray(list(digits)), per_digit)
    gray = generate_gray(pipe, prompts, **kwargs)
    return {
        "prompt": template,
        "images": len(gray),
        "mean_size": float(measure(gray).size.mean()),
        "mean_aspect": float(aspect(gray).mean()),
        # identity read at a normal size: the classifier misreads a quarter of real half-size digits
        "prompt_accuracy": prompt_accuracy(judge.predict(normalize_size(gray)), wanted),
    }


def cosine_to(judge: Judge, gray: np.ndarray, reference: np.ndarray) -> float:
    """Mean cosine similarity of each image's classifier features to the reference images' mean feature."""
    f = judge.features(gray)
    r = judge.features(reference).mean(axis=0)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-8)
    r = r / max(np.linalg.norm(r), 1e-8)
    return float((f @ r).mean())


def subject_report(
    pipe: Pipeline, judge: Judge, instances: np.ndarray, subject_prompt: str, class_prompt: str, digit: int,
    n: int = 100, **kwargs,
) -> dict:  # fmt: skip
    """DreamBooth's fidelity / PRES / DIV comparison in miniature."""
    subject = generate_gray(pipe, [subject_prompt] * n, **kwargs)
    plain = generate_gray(pipe, [class_prompt] * n, seed=10_000, **kwargs)
    return {
        "subject_fidelity": cosine_to(judge, subject, instances),
        "class_drift_to_subject": cosine_to(judge, plain, instances),
        "class_accuracy": prompt_accuracy(judge.predict(plain), np.full(n, digit)),
        "class_diversity": diversity(judge.features(plain), np.zeros(n)),
    }
