"""sdlab: Stable Diffusion end to end — generate, train and measure, offline."""

from sdlab.errors import InputError
from sdlab.loading import DEFAULT_MODEL, load_pipeline
from sdlab.outputs import save_result
from sdlab.pipeline import Pipeline
from sdlab.sampling.loop import GenerationResult, generate
from sdlab.version import __version__

__all__ = [
    "__version__",
    "DEFAULT_MODEL",
    "GenerationResult",
    "InputError",
    "Pipeline",
    "generate",
    "load_pipeline",
    "save_result",
]
