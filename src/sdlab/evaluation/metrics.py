"""Metrics on classifier outputs and features, as pure functions of arrays."""

from __future__ import annotations

import numpy as np
from scipy import linalg


def prompt_accuracy(predicted: np.ndarray, wanted: np.ndarray) -> float:
    """Share of images classified as the digit their prompt asked for."""
    return float((np.asarray(predicted) == np.asarray(wanted)).mean())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID's formula, Heusel et al. 2017):
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)); `a` (N, D), `b` (M, D), N, M >= 2.

    Tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of the symmetric PSD matrix
    S_a^(1/2) S_b S_a^(1/2), which has the same spectrum as S_a S_b: no matrix square root of a
    non-symmetric product (`scipy.linalg.sqrtm`, whose `disp` argument SciPy 1.18 removed), no complex
    parts, and no regularising of nearly singular covariances (as torchmetrics' FID does)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root_a @ s_b @ root_a
    trace_covmean = np.sqrt(np.clip(linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_covmean)


def diversity(features: np.ndarray, groups: np.ndarray) -> float:
    """Mean pairwise feature distance within each group (prompt), averaged over groups: 0 = all alike."""
    features, groups = np.asarray(features, dtype=np.float64), np.asarray(groups)
    per_group = []
    for g in np.unique(groups):
        f = features[groups == g]
        if len(f) < 2:
            continue
        d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
        per_group.append(d.sum() / (len(f) * (len(f) - 1)))
    return float(np.mean(per_group)) if per_group else 0.0


def kernel_distance(
    a: np.ndarray, b: np.ndarray, *, subset_size: int = 1000, subsets: int = 100, seed: int = 0
) -> tuple[float, float]:
    """KID: the unbiased squared MMD between two feature sets under the cubic polynomial kernel
    k(x, y) = (x·y / d + 1)^3 (Bińkowski et al. 2018, "Demystifying MMD GANs"); returns (mean, std) over subsets.

    `a` (N, D), `b` (M, D), N, M >= 2. Unlike FID it is unbiased at small n: its expectation does not depend on
    the sample count, so 200 and 1,000 images measure the same thing (with more noise at 200), and two samples
    of one distribution score about 0 (it can be slightly negative). When both sets have at most `subset_size`
    rows, the whole sets are compared once (std 0); otherwise `subsets` random subsets of `subset_size` rows
    each, as torch-fidelity and torchmetrics compute it.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = a.shape[1]
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError("KID needs at least 2 rows in each feature set")
    rng = np.random.default_rng(seed)
    whole = len(a) <= subset_size and len(b) <= subset_size
    values = []
    for _ in range(1 if whole else subsets):
        x = a if whole else a[rng.choice(len(a), size, replace=False)]
        y = b if whole else b[rng.choice(len(b), size, replace=False)]
        k_xx, k_yy, k_xy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        n, m = len(x), len(y)
        values.append(
            (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1))
            + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
            - 2 * k_xy.mean()
        )
    return float(np.mean(values)), float(np.std(values))


def precision_recall(real: np.ndarray, generated: np.ndarray, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): fidelity and coverage, separately.

    Each sample's neighbourhood is the ball reaching its k-th nearest neighbour in its own set. Precision is
    the share of generated samples inside some real sample's ball (are the images like real ones?); recall is
    the share of real samples inside some generated sample's ball (is every kind of real digit drawn?).
    `real` (N, D), `generated` (M, D), N, M > k. Returns (precision, recall), each in [0, 1].
    """
    real, generated = np.asarray(real, dtype=np.float64), np.asarray(generated, dtype=np.float64)
    if len(real) <= k or len(generated) <= k:
        raise ValueError(f"precision and recall need more than k = {k} samples in each set")
    return _coverage(real, generated, k), _coverage(generated, real, k)


def _coverage(support: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Share of `queries` within the k-NN ball of at least one row of `support`."""
    radii = np.sort(_distances(support, support), axis=1)[:, k]  # column 0 is the row itself
    inside = np.zeros(len(queries), dtype=bool)
    for start in range(0, len(queries), 1024):
        chunk = _distances(queries[start : start + 1024], support)
        inside[start : start + 1024] = (chunk <= radii[None]).any(axis=1)
    return float(inside.mean())


def _distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    squared = (x**2).sum(1)[:, None] + (y**2).sum(1)[None] - 2 * x @ y.T
    return np.sqrt(np.clip(squared, 0, None))
