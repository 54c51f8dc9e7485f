"""The MNIST digits sdlab trains on, offline: 5,000 images shipped in the package, with a fixed split."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MNIST_FILE = Path(__file__).parent / "mnist_5k.csv.gz"
SIZE = 32  # 28x28 digits padded to 32x32: three halvings of the VAE and UNet stay whole (32 -> 8 -> 2)
HELD_OUT_PER_CLASS = 100  # the evaluation split: 1,000 digits no model ever trains on
SPLIT_SEED = 1234


@dataclass
class Digits:
    images: np.ndarray  # (N, 28, 28) uint8, white ink on black as in MNIST
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> Digits:
        return Digits(self.images[index], self.labels[index])


def load_mnist() -> Digits:
    with gzip.open(MNIST_FILE, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return Digits(rows[:, :-1].reshape(-1, 28, 28).astype(np.uint8), rows[:, -1])


def train_test_split(digits: Digits | None = None) -> tuple[Digits, Digits]:
    """The fixed split: 100 digits per class held out for evaluation, the other 4,000 for training."""
    digits = digits or load_mnist()
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.concatenate(
        [rng.permutation(np.flatnonzero(digits.labels == c))[:HELD_OUT_PER_CLASS] for c in range(10)]
    )
    train = np.setdiff1d(np.arange(len(digits)), test)
    return digits.subset(train), digits.subset(np.sort(test))


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 3, 32, 32) float in [-1, 1]: grey as RGB, so the model is an ordinary SD."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / 127.5 - 1)
    x = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
    return x[:, None].expand(-1, 3, -1, -1).contiguous()


def to_gray(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] (what `generate` returns) -> (N, 28, 28) in [0, 1], cropped back from 32x32."""
    gray = pixels.float().mean(dim=1)
    if gray.shape[-1] == SIZE:
        gray = gray[:, 2:-2, 2:-2]
    elif gray.shape[-1] != 28:
        gray = torch.nn.functional.interpolate(gray[:, None], size=(28, 28), mode="area")[:, 0]
    return gray.clamp(0, 1)
