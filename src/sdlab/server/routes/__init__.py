"""The HTTP API's routes, in A1111's groups: generation, models, options, utilities.

Each module is a FastAPI `APIRouter` under `/sdapi/v1`; handlers are thin (validate, call the request
layer, encode). They reach the one `Worker` and its `ModelRegistry` through `app.state`.
"""

from __future__ import annotations

from fastapi import Request

from sdlab.service.registry import ModelRegistry
from sdlab.service.worker import Worker

API = "/sdapi/v1"


def worker(request: Request) -> Worker:
    """The app's worker (a FastAPI dependency)."""
    return request.app.state.worker


def registry(request: Request) -> ModelRegistry:
    """The app's model registry (a FastAPI dependency)."""
    return request.app.state.worker.registry
