"""The server in parts: every route documents its response, and the UI's files stay bounded."""

from __future__ import annotations

import PIL.Image

from sdlab.server.app import create_app
from sdlab.service import GeneratedImage, ModelRegistry


def test_every_route_documents_its_response_body():
    spec = create_app(ModelRegistry(), ui=False).app.openapi()
    named = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
            named[f"{method.upper()} {path}"] = schema.get("$ref") or schema.get("items", {}).get("$ref")
    for route, model in {
        "POST /sdapi/v1/txt2img": "GenerationResponse",
        "POST /sdapi/v1/img2img": "GenerationResponse",
        "GET /sdapi/v1/progress": "ProgressResponse",
        "GET /sdapi/v1/samplers": "SamplerItem",
        "GET /sdapi/v1/schedulers": "SchedulerItem",
        "GET /sdapi/v1/sd-models": "SDModelItem",
        "GET /sdapi/v1/loras": "LoraItem",
        "GET /sdapi/v1/embeddings": "EmbeddingsResponse",
        "GET /sdapi/v1/options": "OptionsResponse",
        "POST /sdapi/v1/options": "SetOptionsResponse",
        "POST /sdapi/v1/png-info": "PNGInfoResponse",
        "GET /sdapi/v1/memory": "MemoryResponse",
    }.items():
        assert named[route] == f"#/components/schemas/{model}", route
    tags = {op["tags"][0] for ops in spec["paths"].values() for op in ops.values()}
    assert tags == {"generation", "models", "options", "utilities"}


def test_the_ui_keeps_a_bounded_folder_of_files():
    from sdlab.ui.results import OutputFolder

    folder = OutputFolder(limit=3)
    image = PIL.Image.new("RGB", (8, 8))
    paths = [folder.write(GeneratedImage(image, {"seed": i}, "a cat\nSeed: 1")) for i in range(5)]
    kept = sorted(p.name for p in folder.path.glob("*.png"))
    assert kept == sorted(p.rsplit("/", 1)[-1] for p in paths[-3:])  # the newest three
