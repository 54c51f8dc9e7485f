"""Measured style of a handwritten digit: stroke thickness, slant and size, from pixels alone.

thickness = 2 * ink area / ink perimeter     (a stroke of width w and length L: area wL, edge 2L)
slant     = -mu11 / mu02 of the ink's second moments (the shear that deskews MNIST; > 0 leans right)
size      = height of the ink's bounding box, in pixels of the 28x28 image
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INK = 0.5  # a pixel in [0, 1] above this is ink


@dataclass
class Style:
    thickness: np.ndarray  # pixels
    slant: np.ndarray  # horizontal shift per pixel of height
    size: np.ndarray  # pixels


def measure(images: np.ndarray) -> Style:
    """`images`: (N, H, W) floats in [0, 1] (or uint8), white ink on black."""
    x = np.asarray(images, dtype=np.float64)
    if x.max() > 1.5:
        x = x / 255.0
    ink = x > INK
    area = ink.sum(axis=(1, 2))
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    inner = (
        padded[:, 1:-1, 1:-1]
        & padded[:, :-2, 1:-1]
        & padded[:, 2:, 1:-1]
        & padded[:, 1:-1, :-2]
        & padded[:, 1:-1, 2:]
    )
    perimeter = (ink & ~inner).sum(axis=(1, 2))
    thickness = 2 * area / np.maximum(perimeter, 1)

    h, w = x.shape[1:]
    rows, cols = np.mgrid[0:h, 0:w]
    mass = np.maximum(x.sum(axis=(1, 2)), 1e-6)
    r0 = (x * rows).sum(axis=(1, 2)) / mass
    c0 = (x * cols).sum(axis=(1, 2)) / mass
    dr, dc = rows[None] - r0[:, None, None], cols[None] - c0[:, None, None]
    mu11 = (x * dr * dc).sum(axis=(1, 2)) / mass
    mu02 = (x * dr * dr).sum(axis=(1, 2)) / mass
    slant = -mu11 / np.maximum(mu02, 1e-6)

    any_row = ink.any(axis=2)
    top = np.argmax(any_row, axis=1)
    bottom = h - np.argmax(any_row[:, ::-1], axis=1)
    size = np.where(any_row.any(axis=1), bottom - top, 0)
    return Style(thickness=thickness, slant=slant, size=size.astype(np.float64))
