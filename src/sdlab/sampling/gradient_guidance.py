"""Gradient guidance: steer sampling with the gradient of a score computed on the predicted clean image.

The lesson notes' explanation made runnable. At every step the UNet's noise prediction implies a prediction of
the clean latent, x0 = (x_t - sqrt(1 - a) * eps) / sqrt(a), with a = alphas_cumprod[t]. Decode x0 to
pixels, score the pixels (e.g. a classifier's log-probability of "digit 7"), and move x0 along the
gradient of that score: x0' = x0 + scale * d score / d x0. The prediction is then rewritten so that the
scheduler sees x0' for the same x_t (eps' = eps - sqrt(a / (1 - a)) * scale * grad), which works for
every scheduler. This is classifier guidance (Dhariwal & Nichol 2021) applied to the predicted clean
image instead of the noisy one, as in universal guidance (Bansal et al. 2023): any differentiable
score on ordinary images can steer, with no classifier trained on noisy inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from sdlab.sampling.latents import decode_latents, predicted_x0

PixelScore = Callable[[torch.Tensor], torch.Tensor]  # images (B, 3, H, W) in [0, 1] -> score (B,)


@dataclass
class GradientGuide:
    score: PixelScore  # higher = more wanted; differentiable in the pixels
    scale: float  # step size along the score's gradient, in latent units per unit score
    recipe: dict[str, Any] = field(default_factory=dict)  # how to rebuild it, saved with the image


@contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic kernels for the block inside, restored afterwards: the same inputs give the same bits
    on every run of one device. A backward pass on CUDA otherwise adds in whatever order atomics land
    (convolution weight gradients, nearest upsampling), so a replay of a guided image could differ by one
    8-bit level. cuBLAS also needs `CUBLAS_WORKSPACE_CONFIG` (set by `sdlab.loading.resolve_device`)."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)  # an op without a deterministic kernel warns
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2], previous[3]


def alpha_bar_at(alphas_cumprod: torch.Tensor, t: torch.Tensor | float) -> float:
    """alphas_cumprod at timestep t, interpolated for the fractional timesteps of Karras-sigma schedulers."""
    t = float(t)
    lo = int(min(max(t, 0), len(alphas_cumprod) - 1))
    hi = min(lo + 1, len(alphas_cumprod) - 1)
    w = t - lo
    return float((1 - w) * alphas_cumprod[lo] + w * alphas_cumprod[hi])


def guide_prediction(
    guide: GradientGuide,
    vae: Any,
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_bar: float,
    prediction_type: str,
) -> torch.Tensor:
    """The UNet's output rewritten so that its implied clean latent moves along the score's gradient.

    `sample` is the UNet's input x_t (after `scale_model_input`, i.e. variance-preserving).
    """
    a, s = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    x0 = predicted_x0(model_output, sample, alpha_bar, prediction_type)
    with torch.enable_grad(), deterministic():
        x0_var = x0.detach().float().requires_grad_(True)
        pixels = (decode_latents(vae, x0_var.to(vae.dtype)).float() / 2 + 0.5).clamp(0, 1)
        (grad,) = torch.autograd.grad(guide.score(pixels).sum(), x0_var)
    x0_new = x0 + guide.scale * grad.to(x0.dtype)
    eps_new = (sample - a * x0_new) / s
    return eps_new if prediction_type == "epsilon" else a * eps_new - s * x0_new


class GradientGuidance:
    """`denoiser(sample, t, step) -> Prediction`: another denoiser's prediction moved by `guide_prediction`.

    `alphas_cumprod` and `prediction_type` come from the scheduler; `vae` decodes x0 for the score."""

    def __init__(self, inner: Any, guide: GradientGuide, vae: Any, alphas_cumprod: torch.Tensor,
                 prediction_type: str) -> None:  # fmt: skip
        self.inner, self.guide, self.vae = inner, guide, vae
        self.alphas_cumprod, self.prediction_type = alphas_cumprod, prediction_type

    def __call__(self, sample: torch.Tensor, t: torch.Tensor, step: int) -> Any:
        prediction = self.inner(sample, t, step)
        alpha_bar = alpha_bar_at(self.alphas_cumprod, t)
        prediction.noise_pred = guide_prediction(
            self.guide, self.vae, prediction.noise_pred, sample, alpha_bar, self.prediction_type
        )
        return prediction
