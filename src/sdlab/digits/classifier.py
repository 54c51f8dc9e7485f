"""A small CNN that reads handwritten digits: the captioner's eyes and, trained apart, the evaluation's judge.

Its 128-d penultimate features are what classifier-FID compares (as the fast.ai course measures FID
with its own classifier's features instead of Inception's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sdlab.atomic import atomic_path

# trained apart from any captioner (scripts/train_eval_classifier.py): the judge of `sdlab eval`
EVAL_CLASSIFIER = Path(__file__).resolve().parent.parent / "models" / "digits-eval-classifier.safetensors"


class DigitClassifier(nn.Module):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 28, 28) or (N, 1, 28, 28) in [0, 1] -> logits (N, 10)."""
        return self.head(self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x[:, None]
        return self.features((x - 0.13) / 0.31)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        self.eval()
        return torch.cat([self(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])

    @torch.no_grad()
    def features_of(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        self.eval()
        return torch.cat([self.embed(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp))

    @classmethod
    def load(cls, path: str | Path) -> DigitClassifier:
        model = cls()
        model.load_state_dict(load_file(str(path)))
        return model.eval()


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random small rotations, shears, scalings and shifts, so the judge also reads imperfect digits."""
    n = x.shape[0]
    r = lambda scale: (torch.rand(n, generator=generator) * 2 - 1) * scale  # noqa: E731
    angle, shear, zoom = r(0.2), r(0.2), 1 + r(0.12)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin + shear, r(0.12)], 1), torch.stack([sin, cos, r(0.12)], 1)], 1
    )
    grid = nn.functional.affine_grid(theta, (n, 1, 28, 28), align_corners=False)
    return nn.functional.grid_sample(x[:, None], grid, align_corners=False, padding_mode="zeros")[:, 0]


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 2e-3,
) -> DigitClassifier:
    """Train from scratch on (N, 28, 28) uint8 digits; a few minutes at most on a laptop CPU."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitClassifier()
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
            loss = nn.functional.cross_entropy(model(augment(x[idx], generator)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def accuracy(model: DigitClassifier, images: np.ndarray | torch.Tensor, labels: np.ndarray) -> float:
    x = torch.as_tensor(images).float()
    if x.max() > 1.5:
        x = x / 255
    return float((model.predict(x).numpy() == np.asarray(labels)).mean())
