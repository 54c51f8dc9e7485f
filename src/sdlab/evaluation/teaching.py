"""Measures for what a teaching recipe changed, on the digits model, read by the evaluation classifier.

- domain: is a generated digit in the new visual domain (dark ink on white paper, i.e. inverted)?
- size: the measured height of the digit (textual inversion of "<tiny>");
- subject fidelity and language drift (DreamBooth, Ruiz et al. 2022 in miniature): cosine similarity of
  classifier features to the subject's instance images, for the subject prompt ("fidelity") and for
  the plain class prompt ("drift": the class word moving towards the subject), plus the class
  prompt's accuracy and diversity.
"""

from __future__ import annotations

import numpy as np

from sdlab.digits.attributes import measure
from sdlab.digits.data import to_gray
from sdlab.evaluation.digits import Judge
from sdlab.evaluation.metrics import diversity, prompt_accuracy
from sdlab.pipeline import Pipeline


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


def is_inverted(gray: np.ndarray) -> np.ndarray:
    """True where the paper is light: the border of the 28x28 picture is mostly bright."""
    border = np.concatenate([gray[:, :3].reshape(len(gray), -1), gray[:, -3:].reshape(len(gray), -1),
                             gray[:, :, :3].reshape(len(gray), -1), gray[:, :, -3:].reshape(len(gray), -1)], 1)  # fmt: skip
    return border.mean(axis=1) > 0.5


def as_white_ink(gray: np.ndarray) -> np.ndarray:
    """Each image with white ink on black, as the classifier reads digits (inverted ones flipped back)."""
    flip = is_inverted(gray)
    return np.where(flip[:, None, None], 1 - gray, gray)


def domain_report(pipe: Pipeline, judge: Judge, per_digit: int = 20, **kwargs) -> dict:
    """Plain digit prompts: share drawn in the inverted domain, and accuracy read in either polarity."""
    prompts = [f"a handwritten digit {d}" for d in range(10) for _ in range(per_digit)]
    wanted = np.repeat(np.arange(10), per_digit)
    gray = generate_gray(pipe, prompts, **kwargs)
    return {
        "images": len(gray),
        "inverted_share": float(is_inverted(gray).mean()),
        "prompt_accuracy": prompt_accuracy(judge.predict(as_white_ink(gray)), wanted),
    }


def size_report(
    pipe: Pipeline, judge: Judge, template: str, digits=range(10), per_digit: int = 20, **kwargs
) -> dict:
    """Mean measured digit height and accuracy for prompts `template.format(d=D)`."""
    prompts = [template.format(d=d) for d in digits for _ in range(per_digit)]
    wanted = np.repeat(np.asarray(list(digits)), per_digit)
    gray = generate_gray(pipe, prompts, **kwargs)
    return {
        "prompt": template,
        "images": len(gray),
        "mean_size": float(measure(gray).size.mean()),
        "prompt_accuracy": prompt_accuracy(judge.predict(gray), wanted),
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
