"""Small networks that read handwritten digits: the captioner's eyes and, trained apart, the evaluation's judges.

`DigitClassifier` (a VGG-style CNN on the raw pixels) is the captioner's reader and the first judge;
`NormalisedDigitNet` (a residual network that first normalises each digit as MNIST did) is the second,
independent judge. Their 128-d penultimate features are what classifier-FID compares (as the fast.ai
course measures FID with its own classifier's features instead of Inception's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sdlab.atomic import atomic_path
from sdlab.digits.normalise import mnist_normalise

MODELS = Path(__file__).resolve().parent.parent / "models"
# trained apart from any captioner and from each other (scripts/train_eval_classifier.py): `sdlab eval`'s judges
EVAL_CLASSIFIER = MODELS / "digits-eval-classifier.safetensors"
EVAL_CLASSIFIER_NORMALISED = MODELS / "digits-eval-normalised.safetensors"


class DigitReader(nn.Module):
    """What every digit reader offers: logits, 128-d features, batched prediction, safetensors files.

    Input: (N, 28, 28) or (N, 1, 28, 28) float digits in [0, 1], ink bright (as `digits.data.to_gray` gives)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 28, 28) or (N, 1, 28, 28) in [0, 1] -> logits (N, 10)."""
        return self.head(self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """The digit read in each image: (N,) int64."""
        self.eval()
        return torch.cat([self(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])

    @torch.no_grad()
    def features_of(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Penultimate features (N, 128) float32: what FID, KID and precision/recall compare."""
        self.eval()
        return torch.cat([self.embed(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp))

    @classmethod
    def load(cls, path: str | Path) -> DigitReader:
        model = cls()
        model.load_state_dict(load_file(str(path)))
        return model.eval()


class DigitClassifier(DigitReader):
    """VGG-style: two 3x3 conv pairs with BatchNorm and max-pooling, a 128-unit dense layer; raw pixels in."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),  # 7x7
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(128, 10)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x[:, None]
        return self.features((x - 0.13) / 0.31)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(8, channels), nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(8, channels),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(x + self.body(x))


def _down(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]


class NormalisedDigitNet(DigitReader):
    """A residual network (He et al. 2016) with GroupNorm, SiLU and global average pooling, reading digits after
    MNIST's normalisation (`normalise.mnist_normalise`): where and how large a digit was drawn is gone, so it
    judges shape. Shares no normalisation layer, pooling, input, augmentation or seed with `DigitClassifier`."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.GroupNorm(8, 32), nn.SiLU(), _Residual(32),
            *_down(32, 64), _Residual(64),  # 14x14
            *_down(64, 128), _Residual(128),  # 7x7
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(128, 10)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x[:, 0]
        return self.features(mnist_normalise(x)[:, None] * 2 - 1)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random small rotations, shears, scalings and shifts, so the first judge also reads imperfect digits."""
    n = x.shape[0]
    r = lambda scale: (torch.rand(n, generator=generator) * 2 - 1) * scale  # noqa: E731
    angle, shear, zoom = r(0.2), r(0.2), 1 + r(0.12)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin + shear, r(0.12)], 1), torch.stack([sin, cos, r(0.12)], 1)], 1
    )
    grid = nn.functional.affine_grid(theta, (n, 1, 28, 28), align_corners=False)
    return nn.functional.grid_sample(x[:, None], grid, align_corners=False, padding_mode="zeros")[:, 0]


def augment_strokes(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The second judge's augmentation, unlike the first's: rotations up to 15 degrees, sideways stretches of
    0.75-1.25, and strokes made thicker or thinner (a 3x3 max or min filter, blended in at a random weight).
    Shifts and sizes need no augmenting: the network normalises them away."""
    n = x.shape[0]
    u = lambda: torch.rand(n, generator=generator)  # noqa: E731
    angle, stretch = (u() * 2 - 1) * 0.26, 1 + (u() * 2 - 1) * 0.25
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros(n)
    theta = torch.stack(
        [torch.stack([cos / stretch, -sin, zero], 1), torch.stack([sin / stretch, cos, zero], 1)], 1
    )
    grid = nn.functional.affine_grid(theta, (n, 1, 28, 28), align_corners=False)
    x = nn.functional.grid_sample(x[:, None], grid, align_corners=False, padding_mode="zeros")
    thicker = nn.functional.max_pool2d(x, 3, stride=1, padding=1)
    thinner = -nn.functional.max_pool2d(-x, 3, stride=1, padding=1)
    weight, pick = u()[:, None, None, None], u()[:, None, None, None]
    morphed = torch.where(pick < 0.5, thicker, thinner)
    return (x + weight * (morphed - x))[:, 0]


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 2e-3,
    architecture: type[DigitReader] = DigitClassifier,
    augmentation=augment,
) -> DigitReader:
    """Train `architecture` from scratch on (N, 28, 28) uint8 digits with `augmentation(x, generator)`; AdamW
    with a one-cycle schedule. A few minutes at most on a laptop CPU."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = architecture()
    x = torch.from_numpy(images).float() / 255
    y = torch.from_numpy(labels).long()
    steps = epochs * (len(x) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(len(x) // batch_size):
            idx = order[i * batch_size : (i + 1) * batch_size]
            loss = nn.functional.cross_entropy(model(augmentation(x[idx], generator)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def accuracy(model: DigitReader, images: np.ndarray | torch.Tensor, labels: np.ndarray) -> float:
    x = torch.as_tensor(images).float()
    if x.max() > 1.5:
        x = x / 255
    return float((model.predict(x).numpy() == np.asarray(labels)).mean())
