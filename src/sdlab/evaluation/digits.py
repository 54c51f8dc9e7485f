"""`sdlab eval`: the digits model measured by judges, classifiers trained apart from the captioner and each other.

Each judge (its own architecture, input, augmentation and seed; never shown the held-out split) reads the
generated digits: prompt accuracy, classifier-feature FID and KID against held-out real digits next to the
real-vs-real value computed the same way at the same count, precision and recall, and diversity. A figure
tuned to one judge's features is tuned to that judge, so the headline is the worse of the judges. Style
(thickness, slant, size) is measured from the pixels, judge-free.

Seeds: settings are chosen on the validation seeds and reported on the held-out seeds (`seeds`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sdlab.digits.attributes import measure
from sdlab.digits.captioner import WORDS
from sdlab.digits.classifier import (
    EVAL_CLASSIFIER,
    EVAL_CLASSIFIER_NORMALISED,
    DigitClassifier,
    DigitReader,
    NormalisedDigitNet,
)
from sdlab.digits.data import to_gray, to_pixels, train_test_split
from sdlab.evaluation.metrics import (
    diversity,
    frechet_distance,
    kernel_distance,
    precision_recall,
    prompt_accuracy,
)
from sdlab.evaluation.seeds import HELD_OUT_SEED
from sdlab.pipeline import Pipeline

FLOOR_DRAWS = 4  # real samples averaged into FID's floor (4 x 1,000 is the whole training split)

# name -> (architecture, weights, what it is); trained by scripts/train_eval_classifier.py
JUDGES: dict[str, tuple[type[DigitReader], Path, str]] = {
    "cnn": (
        DigitClassifier,
        EVAL_CLASSIFIER,
        "VGG-style CNN (BatchNorm, max-pooling) on the raw pixels; seed 7",
    ),
    "normalised": (
        NormalisedDigitNet,
        EVAL_CLASSIFIER_NORMALISED,
        "residual CNN (GroupNorm, average pooling) on MNIST-normalised digits (ink box 20x20, centred by mass); "
        "seed 2026",
    ),
}


@dataclass
class Judge:
    """One evaluation classifier plus the real digits it compares against.

    FID is always taken against all held-out digits; the floor is n real training digits scored the
    same way, so a sample of n generated digits is compared with real digits at the same count.
    """

    classifier: DigitReader
    reference: np.ndarray  # (N, 28, 28) in [0, 1]: the held-out digits, never seen by any training
    real_pool: np.ndarray  # (M, 28, 28) in [0, 1]: real training digits, drawn from for the floor
    real_labels: np.ndarray  # (M,) their digits: draws are class-balanced, as `sample_digits`' prompts are
    name: str = "cnn"
    _reference_features: np.ndarray | None = field(default=None, repr=False)
    _floors: dict = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, name: str = "cnn", path: str | Path | None = None) -> Judge:
        """The judge `name` (a key of `JUDGES`), from its shipped weights or from `path`."""
        architecture, shipped, _ = JUDGES[name]
        train, test = train_test_split()
        as_float = lambda x: (x / 255.0).astype(np.float32)  # noqa: E731
        reader = architecture.load(path or shipped)
        return cls(reader, as_float(test.images), as_float(train.images), train.labels, name)

    def features(self, gray: np.ndarray) -> np.ndarray:
        return self.classifier.features_of(torch.as_tensor(gray, dtype=torch.float32)).numpy()

    def fid(self, gray: np.ndarray) -> float:
        return frechet_distance(self.features(gray), self.reference_features())

    def reference_features(self) -> np.ndarray:
        if self._reference_features is None:
            self._reference_features = self.features(self.reference)
        return self._reference_features

    def kid(self, gray: np.ndarray) -> float:
        """KID (unbiased MMD^2, cubic kernel) of these digits' features against the held-out digits'.

        Features are standardised by the held-out digits' per-dimension mean and std first, leaving out the
        dimensions that hardly vary there (dead ReLU units): the cubic kernel (x·y/d + 1)^3 expects x·y/d of
        order 1, as Inception's pooled features give, and this classifier's raw features are far larger. All
        comparisons share one reference set, so its sampling noise (about 0.005 at 1,000 digits) offsets every
        value alike: compare a model's KID with the real-vs-real value beside it, not with 0."""
        reference = self.reference_features()
        mean, std = reference.mean(0), reference.std(0)
        keep = std > 1e-3 * std.max()
        scaled = lambda f: ((f - mean) / np.where(keep, std, 1.0))[:, keep]  # noqa: E731
        return kernel_distance(scaled(self.features(gray)), scaled(reference))[0]

    def precision_recall(self, gray: np.ndarray) -> tuple[float, float]:
        """(precision, recall) of these digits against the held-out digits, k = 3 (Kynkäänniemi et al. 2019)."""
        return precision_recall(self.reference_features(), self.features(gray))

    def floor(self, n: int, seed: int = 0) -> float:
        """FID of n real training digits, the best a model can score at n: the mean over up to `FLOOR_DRAWS`
        disjoint class-balanced draws of n (one draw's value moves by a third from draw to draw at n = 500).
        Cached per n. Raises ValueError when the training split holds too few digits of some class for one draw."""
        if (n, seed) not in self._floors:
            draws = self._draws(n, seed)
            fids = [self.fid(self.real_pool[index]) for index in draws[:FLOOR_DRAWS]]
            self._floors[n, seed] = float(np.mean(fids))
        return self._floors[n, seed]

    def real_sample(self, n: int, seed: int = 0) -> np.ndarray:
        """n real training digits, class-balanced (the first of `floor`'s draws)."""
        return self.real_pool[self._draws(n, seed)[0]]

    def _draws(self, n: int, seed: int) -> list[np.ndarray]:
        """Disjoint index sets of n training digits, n // 10 of each digit (one more for the first n % 10)."""
        rng = np.random.default_rng(seed)
        per_class = [n // 10 + (c < n % 10) for c in range(10)]
        shuffled = [rng.permutation(np.flatnonzero(self.real_labels == c)) for c in range(10)]
        count = min(len(pool) // k for pool, k in zip(shuffled, per_class, strict=True) if k)
        if count < 1:
            raise ValueError(
                f"the FID floor needs {n} real digits, class-balanced; the training split has too few"
            )
        return [np.concatenate([pool[i * k : (i + 1) * k] for pool, k in zip(shuffled, per_class, strict=True)])
                for i in range(count)]  # fmt: skip

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
    """Generate `per_digit` images of each digit; returns (gray (N, 28, 28) in [0, 1], wanted digits).

    `template` names the digit as {d} ("7") or {word} ("seven").

    Image i has seed `seed + i`, made in batches of `batch`; under `accelerate launch` the batches are
    split across processes (as `sdlab generate --from-file` splits its lines) and gathered on every
    process, so the result equals a one-process run."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    prompts = [template.format(d=d, word=WORDS[d]) for d in range(10) for _ in range(per_digit)]
    wanted = np.repeat(np.arange(10), per_digit)
    starts = list(range(0, len(prompts), batch))
    done: list[tuple[int, np.ndarray]] = []
    state = PartialState()
    with state.split_between_processes(starts) as mine:
        for start in mine:
            chunk = prompts[start : start + batch]
            seeds = list(range(seed + start, seed + start + len(chunk)))
            negatives = None if negative_prompt is None else [negative_prompt] * len(chunk)
            result = pipe.generate(chunk, negatives, seed=seeds, **kwargs)
            done.append((start, to_gray(result.pixels).numpy()))
    if state.num_processes > 1:
        done = gather_object(done)
    return np.concatenate([gray for _, gray in sorted(done, key=lambda item: item[0])]), wanted


def max_per_digit() -> int:
    """The most images per digit a sample may have: FID's floor draws as many real training digits of each digit."""
    train, _ = train_test_split()
    return int(np.bincount(train.labels, minlength=10).min())


def judge_descriptions() -> dict[str, str]:
    """name -> what each judge is, for reports."""
    return {name: text for name, (_, _, text) in JUDGES.items()}


def load_judges(names: list[str] | None = None) -> list[Judge]:
    """Every judge in `JUDGES` (or those named), loaded from their shipped weights."""
    return [Judge.load(name) for name in names or JUDGES]


def judge_report(judge: Judge, gray: np.ndarray, wanted: np.ndarray) -> dict:
    """One judge's reading of generated digits (N, 28, 28) in [0, 1] prompted as `wanted` (N,): prompt accuracy,
    FID, KID, precision and recall (Kynkäänniemi et al. 2019), each beside the value for as many real training
    digits (FID's floor: `Judge.floor`), and diversity beside the held-out digits' own."""
    real = judge.real_sample(len(gray))
    precision, recall = judge.precision_recall(gray)
    real_precision, real_recall = judge.precision_recall(real)
    fid, floor = judge.fid(gray), judge.floor(len(gray))
    return {
        "prompt_accuracy": prompt_accuracy(judge.predict(gray), wanted),
        "fid": fid,
        "fid_floor_real_vs_real": floor,
        "fid_ratio": fid / floor,
        "kid": judge.kid(gray),
        "kid_real_vs_real": judge.kid(real),
        "precision": precision,
        "recall": recall,
        "precision_real": real_precision,
        "recall_real": real_recall,
        "diversity": diversity(judge.features(gray), wanted),
        "diversity_real": diversity(judge.reference_features(), judge.predict(judge.reference)),
    }


def worse_of(reports: dict[str, dict]) -> dict:
    """The headline of several judges' reports: the lowest prompt accuracy and the highest FID / floor, each with
    the judge that gave it."""
    accuracy = min(reports, key=lambda name: reports[name]["prompt_accuracy"])
    fid = max(reports, key=lambda name: reports[name]["fid_ratio"])
    return {
        "prompt_accuracy": reports[accuracy]["prompt_accuracy"],
        "fid_ratio": reports[fid]["fid_ratio"],
        "worst_judge": {"prompt_accuracy": accuracy, "fid_ratio": fid},
    }


def judged(judges: list[Judge], gray: np.ndarray, wanted: np.ndarray) -> dict:
    """Sweep columns: the worse-of accuracy and FID / floor, then each judge's, suffixed by its name."""
    reports = {
        j.name: {
            "prompt_accuracy": prompt_accuracy(j.predict(gray), wanted),
            "fid_ratio": j.fid(gray) / j.floor(len(gray)),
        }
        for j in judges
    }
    row = {k: v for k, v in worse_of(reports).items() if k != "worst_judge"}
    for name, report in reports.items():
        row[f"prompt_accuracy_{name}"] = report["prompt_accuracy"]
        row[f"fid_ratio_{name}"] = report["fid_ratio"]
    return row


def evaluate(
    pipe: Pipeline, judges: list[Judge], per_digit: int = 50, seed: int = HELD_OUT_SEED, **kwargs
) -> dict:
    """The headline numbers at the given sampling settings, on images `seed`, `seed + 1`, ...: the worse of the
    judges' prompt accuracy and FID / floor (`worse_of`), measured style, the seconds spent generating, and under
    "judges" each judge's full report (`judge_report`)."""
    start = time.perf_counter()
    gray, wanted = sample_digits(pipe, per_digit, seed=seed, **kwargs)
    seconds = time.perf_counter() - start
    reports = {judge.name: judge_report(judge, gray, wanted) for judge in judges}
    style = measure(gray)
    return {
        "samples": len(gray),
        "seed": seed,
        "sampling_seconds": seconds,
        **worse_of(reports),
        "thickness": float(style.thickness.mean()),
        "slant": float(style.slant.mean()),
        "size": float(style.size.mean()),
        "judges": reports,
    }


def negative_prompt_effect(
    pipe: Pipeline,
    judges: list[Judge],
    digit: int = 7,
    word: str = "thick",
    n: int = 100,
    seed: int = HELD_OUT_SEED,
    **kwargs,
) -> dict:
    """Mean stroke thickness of "a handwritten digit D" with and without the negative prompt `word`, on seeds
    `seed` ... `seed + n - 1`; accuracy is the worse of the judges'."""
    prompt = f"a handwritten digit {digit}"
    out = {}
    for label, negative in (("without", None), ("with", word)):
        result = pipe.generate(
            [prompt] * n,
            None if negative is None else [negative] * n,
            seed=list(range(seed, seed + n)),
            **kwargs,
        )
        gray = to_gray(result.pixels).numpy()
        out[label] = {
            "thickness": float(measure(gray).thickness.mean()),
            "accuracy": min(prompt_accuracy(judge.predict(gray), np.full(n, digit)) for judge in judges),
        }
    out["thickness_change"] = out["with"]["thickness"] / out["without"]["thickness"] - 1
    return out


def strength_effect(
    pipe: Pipeline,
    judge: Judge,
    strengths=(0.3, 0.5, 0.7, 0.9),
    n: int = 100,
    seed: int = HELD_OUT_SEED,
    **kwargs,
) -> list[dict]:
    """img2img of n held-out real digits towards another digit (noise seeds `seed` ... `seed + n - 1`): the share
    keeping the source digit against the share becoming the prompted one, read by `judge`."""
    _, test = train_test_split()
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(test))[:n]
    sources = test.labels[pick]
    targets = (sources + 1 + rng.integers(0, 9, n)) % 10
    images = (to_pixels(test.images[pick]) + 1) / 2  # (n, 3, 32, 32) in [0, 1]
    prompts = [f"a handwritten digit {t}" for t in targets]
    rows = []
    for strength in strengths:
        result = pipe.generate(
            prompts, init_image=images, strength=strength, seed=list(range(seed, seed + n)), **kwargs
        )
        gray = to_gray(result.pixels).numpy()
        predicted = judge.predict(gray)
        rows.append({
            "strength": strength,
            "keeps_source": prompt_accuracy(predicted, sources),
            "becomes_prompted": prompt_accuracy(predicted, targets),
        })  # fmt: skip
    return rows


def gradient_guidance_effect(
    pipe: Pipeline,
    judges: list[Judge],
    scales: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0),
    per_digit: int = 20,
    **kwargs,
) -> list[dict]:
    """Prompt-free generation (empty prompt, no CFG) steered to each digit by `--guide-digit`, per scale.

    Scale 0 is no guidance: the share that happens to be the wanted digit (about 10%). The guide follows the
    "cnn" judge's gradient, so that judge's verdict could be flattered by adversarial pixels; every judge
    reads the same images (`judged`'s columns), the others independently.
    """
    from sdlab.digits.guidance import digit_guide

    kwargs = {k: v for k, v in kwargs.items() if k != "guidance_scale"}
    rows = []
    for scale in scales:
        grays = []
        for d in range(10):
            seeds = list(range(d * per_digit, (d + 1) * per_digit))
            guide = digit_guide(d, scale) if scale > 0 else None
            result = pipe.generate([""] * per_digit, seed=seeds, guidance_scale=1.0, guide=guide, **kwargs)
            grays.append(to_gray(result.pixels).numpy())
        gray, wanted = np.concatenate(grays), np.repeat(np.arange(10), per_digit)
        rows.append({"guide_scale": scale, **judged(judges, gray, wanted)})
    return rows
