"""sdlab: Stable Diffusion end to end — generate, train and measure, offline.

The names below load on first use (PEP 562), so that `import sdlab.errors` or `sdlab --help` does
not import torch and diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sdlab.lazy import lazy_names
from sdlab.version import __version__

_LAZY = {
    "InputError": "sdlab.errors",
    "DEFAULT_MODEL": "sdlab.loading",
    "load_pipeline": "sdlab.loading",
    "save_result": "sdlab.outputs",
    "Pipeline": "sdlab.pipeline",
    "GenerationResult": "sdlab.sampling.loop",
    "generate": "sdlab.sampling.loop",
}

if TYPE_CHECKING:
    from sdlab.errors import InputError
    from sdlab.loading import DEFAULT_MODEL, load_pipeline
    from sdlab.outputs import save_result
    from sdlab.pipeline import Pipeline
    from sdlab.sampling.loop import GenerationResult, generate


__getattr__ = lazy_names(__name__, _LAZY)


__all__ = [
    "DEFAULT_MODEL",
    "GenerationResult",
    "InputError",
    "Pipeline",
    "__version__",
    "generate",
    "load_pipeline",
    "save_result",
]
