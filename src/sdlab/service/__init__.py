"""The request layer: what the CLI, the HTTP API and the web UI all stand on.

- `GenerationRequest`: one call's arguments, with diffusers' names, validated in one place;
- `ModelRegistry`: models, LoRAs and embeddings by name, from folders, models loaded on first use;
- `run_request`: a request run on a registry, extra networks applied for it alone;
- `Worker`: the one thread that owns the models, with a bounded queue, progress, interrupt and skip.

The names load on first use (PEP 562): the CLI's flags are made from `GenerationRequest` without
importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sdlab.lazy import lazy_names

_LAZY = {
    "GeneratedImage": "sdlab.service.run",
    "GenerationRequest": "sdlab.service.request",
    "LoraRef": "sdlab.service.request",
    "ModelEntry": "sdlab.service.registry",
    "ModelRegistry": "sdlab.service.registry",
    "RequestResult": "sdlab.service.run",
    "run_request": "sdlab.service.run",
}

if TYPE_CHECKING:
    from sdlab.service.registry import ModelEntry, ModelRegistry
    from sdlab.service.request import GenerationRequest, LoraRef
    from sdlab.service.run import GeneratedImage, RequestResult, run_request


__getattr__ = lazy_names(__name__, _LAZY)


__all__ = [
    "GeneratedImage",
    "GenerationRequest",
    "LoraRef",
    "ModelEntry",
    "ModelRegistry",
    "RequestResult",
    "run_request",
]
