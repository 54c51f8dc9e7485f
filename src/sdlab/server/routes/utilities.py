"""Utilities: the generation parameters stored in an image (`png-info`) and memory use."""

from __future__ import annotations

from typing import Any

import psutil
import torch
from fastapi import APIRouter

from sdlab.images import read_image_text
from sdlab.metadata import parse_parameters
from sdlab.server import a1111
from sdlab.server.responses import MemoryResponse, PNGInfoResponse
from sdlab.server.routes import API

router = APIRouter(prefix=API, tags=["utilities"])


@router.post("/png-info")
def png_info(body: a1111.PNGInfoRequest) -> PNGInfoResponse:
    chunks = read_image_text(a1111.decode_image(body.image, "image"), what="image")
    text = chunks.pop("parameters", "")
    parameters: dict[str, Any] = {}
    if text:
        prompt, negative, settings = parse_parameters(text)
        parameters = {"Prompt": prompt, "Negative prompt": negative, **settings}
        width, _, height = settings.get("Size", "").partition("x")
        if width.isdigit() and height.isdigit():
            parameters.update({"Size-1": width, "Size-2": height})
    return PNGInfoResponse(info=text, items=chunks, parameters=parameters)


@router.get("/memory")
def memory() -> MemoryResponse:
    ram = psutil.virtual_memory()
    process = psutil.Process().memory_info().rss
    cuda: dict[str, Any] = {"error": "no CUDA GPU"}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        cuda = {"system": {"free": free, "used": total - free, "total": total},
                "active": {"current": torch.cuda.memory_allocated(), "peak": torch.cuda.max_memory_allocated()}}  # fmt: skip
    return MemoryResponse(
        ram={
            "free": ram.available,
            "used": ram.total - ram.available,
            "total": ram.total,
            "process": process,
        },
        cuda=cuda,
    )
