"""`sdlab eval`: the digits model measured by an evaluation classifier trained apart from the captioner.

The evaluation classifier (its own seed, never shown the held-out split) judges generated digits:
prompt accuracy, classifier-feature FID against held-out real digits next to the real-vs-real floor
computed the same way with the same sample count, diversity, and measured style (thickness, slant,
size) with and without negative prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sdlab.digits.attributes import measure
from sdlab.digits.classifier import DigitClassifier
from sdlab.digits.data import to_gray, to_pixels, train_test_split
from sdlab.evaluation.metrics import diversity, frechet_distance, prompt_accuracy
from sdlab.pipeline import Pipeline

EVAL_CLASSIFIER = Path(__file__).resolve().parent.parent / "models" / "digits-eval-classifier.safetensors"


@dataclass
class Judge:
    """The evaluation classifier plus the held-out reference digits it compares against."""

    classifier: DigitClassifier
    reference: np.ndarray  # (N, 28, 28) in [0, 1], held-out real digits
    floor_sample: np.ndarray  # real training digits, as many as the reference: the real-vs-real floor

    @classmethod
    def load(cls, path: str | Path = EVAL_CLASSIFIER, n: int = 500, seed: int = 0) -> Judge:
        train, test = train_test_split()
        rng = np.random.default_rng(seed)
        ref = test.images[rng.permutation(len(test))[:n]] / 255.0
        floor = train.images[rng.permutation(len(train))[:n]] / 255.0
        return cls(DigitClassifier.load(path), ref.astype(np.float32), floor.astype(np.float32))

    def features(self, gray: np.ndarray) -> np.ndarray:
        return self.classifier.features_of(torch.as_tensor(gray, dtype=torch.float32)).numpy()

    def fid(self, gray: np.ndarray) -> float:
        return frechet_distance(self.features(gray), self.features(self.reference))

    def floor(self) -> float:
        return self.fid(self.floor_sample)

    def predict(self, gray: np.ndarray) -> np.ndarray:
        return self.classifier.predict(torch.as_tensor(gray, dtype=torch.float32)).numpy()


def sample_digits(
    pipe: Pipeline,
    per_digit: int,
    *,
    template: str = "a handwritten digit {d}",
    negative_prompt: str | None = None,
    seed: int = 0,
    batch: int = 100,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate `per_digit` images of each digit; returns (gray (N, 28, 28) in [0, 1], wanted digits)."""
    prompts = [template.format(d=d) for d in range(10) for _ in range(per_digit)]
    wanted = np.repeat(np.arange(10), per_digit)
    grays = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        seeds = list(range(seed + start, seed + start + len(chunk)))
        negatives = None if negative_prompt is None else [negative_prompt] * len(chunk)
        result = pipe.generate(chunk, negatives, seed=seeds, **kwargs)
        grays.append(to_gray(result.pixels).numpy())
    return np.concatenate(grays), wanted


def evaluate(pipe: Pipeline, judge: Judge, per_digit: int = 50, **kwargs) -> dict:
    """The headline numbers at the given sampling settings."""
    gray, wanted = sample_digits(pipe, per_digit, **kwargs)
    predicted = judge.predict(gray)
    style = measure(gray)
    return {
        "samples": len(gray),
        "prompt_accuracy": prompt_accuracy(predicted, wanted),
        "fid": judge.fid(gray),
        "fid_floor_real_vs_real": judge.floor(),
        "diversity": diversity(judge.features(gray), wanted),
        "diversity_real": diversity(judge.features(judge.reference), judge.predict(judge.reference)),
        "thickness": float(style.thickness.mean()),
        "slant": float(style.slant.mean()),
        "size": float(style.size.mean()),
    }


def negative_prompt_effect(
    pipe: Pipeline, judge: Judge, digit: int = 7, word: str = "thick", n: int = 100, **kwargs
) -> dict:
    """Mean stroke thickness of "a handwritten digit D" with and without the negative prompt `word`."""
    prompt = f"a handwritten digit {digit}"
    out = {}
    for label, negative in (("without", None), ("with", word)):
        result = pipe.generate(
            [prompt] * n, None if negative is None else [negative] * n, seed=list(range(n)), **kwargs
        )
        gray = to_gray(result.pixels).numpy()
        out[label] = {
            "thickness": float(measure(gray).thickness.mean()),
            "accuracy": prompt_accuracy(judge.predict(gray), np.full(n, digit)),
        }
    out["thickness_change"] = out["with"]["thickness"] / out["without"]["thickness"] - 1
    return out


def strength_effect(
    pipe: Pipeline, judge: Judge, strengths=(0.3, 0.5, 0.7, 0.9), n: int = 100, **kwargs
) -> list[dict]:
    """img2img of held-out real digits towards another digit: share keeping the source vs becoming the target."""
    _, test = train_test_split()
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(test))[:n]
    sources = test.labels[pick]
    targets = (sources + 1 + rng.integers(0, 9, n)) % 10
    images = (to_pixels(test.images[pick]) + 1) / 2  # (n, 3, 32, 32) in [0, 1]
    prompts = [f"a handwritten digit {t}" for t in targets]
    rows = []
    for strength in strengths:
        result = pipe.generate(prompts, init_image=images, strength=strength, seed=list(range(n)), **kwargs)
        gray = to_gray(result.pixels).numpy()
        predicted = judge.predict(gray)
        rows.append({
            "strength": strength,
            "keeps_source": prompt_accuracy(predicted, sources),
            "becomes_prompted": prompt_accuracy(predicted, targets),
        })  # fmt: skip
    return rows
