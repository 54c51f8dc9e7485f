"""sdlab: Stable Diffusion end to end — generate, train and measure, offline."""

__version__ = "0.1.0"
