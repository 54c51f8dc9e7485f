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
