"""Metrics on classifier outputs and features, as pure functions of arrays."""

from __future__ import annotations

import numpy as np
from scipy import linalg


def prompt_accuracy(predicted: np.ndarray, wanted: np.ndarray) -> float:
    """Share of images classified as the digit their prompt asked for."""
    return float((np.asarray(predicted) == np.asarray(wanted)).mean())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID's formula, Heusel et al. 2017):
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s_a @ s_b, disp=False)
    if not np.isfinite(covmean).all():  # nearly singular product: regularise, as the reference code does
        eps = np.eye(len(s_a)) * 1e-6
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


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
