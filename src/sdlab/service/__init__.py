"""The request layer: what the CLI, the HTTP API and the web UI all stand on.

- `GenerationRequest`: one call's arguments, with diffusers' names, validated in one place;
- `ModelRegistry`: models, LoRAs and embeddings by name, from folders, models loaded on first use;
- `run_request`: a request run on a registry, extra networks applied for it alone;
- `Worker`: the one thread that owns the models, with a bounded queue, progress, interrupt and skip.
"""

from sdlab.service.registry import ModelEntry, ModelRegistry
from sdlab.service.request import GenerationRequest, LoraRef
from sdlab.service.run import GeneratedImage, RequestResult, run_request

__all__ = [
    "GeneratedImage",
    "GenerationRequest",
    "LoraRef",
    "ModelEntry",
    "ModelRegistry",
    "RequestResult",
    "run_request",
]
