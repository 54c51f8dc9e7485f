"""sdlab: Stable Diffusion end to end — generate, train and measure, offline."""

__version__ = "0.1.0"

from sdlab.errors import InputError  # noqa: E402
from sdlab.loading import DEFAULT_MODEL, load_pipeline  # noqa: E402
from sdlab.outputs import save_result  # noqa: E402
from sdlab.pipeline import Pipeline  # noqa: E402
from sdlab.sampling.loop import GenerationResult, generate  # noqa: E402

__all__ = [
    "DEFAULT_MODEL",
    "GenerationResult",
    "InputError",
    "Pipeline",
    "generate",
    "load_pipeline",
    "save_result",
]
