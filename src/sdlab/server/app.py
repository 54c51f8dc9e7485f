"""`sdlab serve`'s FastAPI app: AUTOMATIC1111's HTTP API over sdlab's request layer.

Handlers are thin: they turn an A1111 body into a `GenerationRequest` (`server.a1111`), hand it to
the one `Worker` that owns the models, and encode the result. Every refusal is one sentence: bad
input 422, a full queue 503, and the guard's 401/403/413 (`server.security`). An exception inside a
request is logged on the server, answered with 500, and the next request is served as usual.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from pathlib import Path
from typing import Any

import psutil
import torch
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from sdlab.embeddings import read_embedding
from sdlab.errors import InputError
from sdlab.images import read_png_text
from sdlab.metadata import parse_parameters
from sdlab.sampling.schedulers import SAMPLER_ALIASES, SCHEDULE_TYPES, SCHEDULERS
from sdlab.server import a1111
from sdlab.server.security import LOOPBACK_HOSTS, Guard
from sdlab.service import ModelEntry, ModelRegistry, RequestResult
from sdlab.service.worker import QueueFull, Worker
from sdlab.version import __version__

log = logging.getLogger("sdlab.server")
API = "/sdapi/v1"


def create_app(
    registry: ModelRegistry,
    worker: Worker | None = None,
    *,
    allowed_hosts: set[str] | None = LOOPBACK_HOSTS,
    allowed_origins: tuple[str, ...] = (),
    credentials: list[tuple[str, str]] | None = None,
    max_body: int = 32 * 2**20,
    ui: bool = True,
) -> Guard:
    """The ASGI app: A1111's routes under /sdapi/v1, OpenAPI docs at /docs, the web UI at / (unless
    `ui` is False), all behind the `Guard`."""
    worker = worker or Worker(registry)
    app = FastAPI(
        title="sdlab",
        version=__version__,
        description="AUTOMATIC1111-compatible Stable Diffusion API, served by sdlab.",
        docs_url=None,  # served below from local files: the docs page loads nothing from a CDN
        redoc_url=None,
    )
    app.state.worker = worker
    if allowed_origins:  # A1111's --cors-allow-origins: browsers on those origins may call the API
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(allowed_origins), allow_methods=["*"], allow_headers=["*"],
            allow_credentials=True,
        )  # fmt: skip
    _add_error_handlers(app)
    _add_docs(app)

    # -- generation

    @app.post(f"{API}/txt2img", tags=["generate"])
    async def txt2img(body: a1111.Txt2ImgRequest) -> dict[str, Any]:
        return await _generate(worker, body, img2img=False)

    @app.post(f"{API}/img2img", tags=["generate"])
    async def img2img(body: a1111.Img2ImgRequest) -> dict[str, Any]:
        return await _generate(worker, body, img2img=True)

    @app.get(f"{API}/progress", tags=["generate"])
    async def progress(skip_current_image: bool = False) -> dict[str, Any]:
        p = worker.progress()
        image = None if skip_current_image else await run_in_threadpool(p.preview_image)
        return {
            "progress": p.fraction,
            "eta_relative": p.eta,
            "state": {
                "skipped": p.skipped,
                "interrupted": p.interrupted,
                "job": p.job,
                "job_count": p.job_count,
                "job_timestamp": p.job_timestamp,
                "job_no": p.job_no,
                "sampling_step": p.sampling_step,
                "sampling_steps": p.sampling_steps,
                "queued": p.queued,
            },
            "current_image": _b64_png(image) if image is not None else None,
            "textinfo": None,
            "current_task": p.job or None,
        }

    @app.post(f"{API}/interrupt", tags=["generate"])
    async def interrupt() -> dict[str, Any]:
        worker.interrupt()
        return {}

    @app.post(f"{API}/skip", tags=["generate"])
    async def skip() -> dict[str, Any]:
        worker.skip()
        return {}

    # -- what there is

    @app.get(f"{API}/samplers", tags=["lists"])
    def samplers() -> list[dict[str, Any]]:
        return [
            {"name": s.a1111, "aliases": SAMPLER_ALIASES[n], "options": {}} for n, s in SCHEDULERS.items()
        ]

    @app.get(f"{API}/schedulers", tags=["lists"])
    def schedulers() -> list[dict[str, Any]]:
        return [
            {"name": name, "label": label, "aliases": None, "default_rho": 7.0 if name == "karras" else -1,
             "need_inner_model": False}
            for name, label in SCHEDULE_TYPES.items()
        ]  # fmt: skip

    @app.get(f"{API}/sd-models", tags=["lists"])
    def sd_models() -> list[dict[str, Any]]:
        return [_model_item(registry, entry) for entry in registry.models()]

    @app.post(f"{API}/refresh-checkpoints", tags=["lists"])
    @app.post(f"{API}/refresh-loras", tags=["lists"])
    @app.post(f"{API}/refresh-embeddings", tags=["lists"])
    def refresh() -> dict[str, Any]:
        registry.refresh()
        return {}

    @app.get(f"{API}/loras", tags=["lists"])
    def loras() -> list[dict[str, Any]]:
        return [
            {"name": name, "alias": name, "path": name, "metadata": _metadata(path)}
            for name, path in registry.loras().items()
        ]

    @app.get(f"{API}/embeddings", tags=["lists"])
    def embeddings() -> dict[str, Any]:
        loaded, skipped = {}, {}
        for name, path in registry.embeddings().items():
            try:
                _, vectors = read_embedding(path, allow_pickle=registry.allow_pickle)
                if vectors.ndim == 0:
                    raise InputError("not a vector")
            except (InputError, ValueError, TypeError, RuntimeError):  # one bad file does not hide the rest
                skipped[name] = {
                    "step": None,
                    "sd_checkpoint": None,
                    "sd_checkpoint_name": None,
                    "shape": None,
                    "vectors": 0,
                }
                continue
            vectors = vectors.reshape(-1, vectors.shape[-1])
            loaded[name] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                            "shape": int(vectors.shape[1]), "vectors": int(vectors.shape[0])}  # fmt: skip
        return {"loaded": loaded, "skipped": skipped}

    for route in ("sd-vae", "upscalers", "latent-upscale-modes", "hypernetworks", "face-restorers",
                  "realesrgan-models", "prompt-styles"):  # fmt: skip
        app.add_api_route(f"{API}/{route}", _empty_list, methods=["GET"], tags=["lists"])

    @app.get(f"{API}/scripts", tags=["lists"])
    def scripts() -> dict[str, list]:
        return {"txt2img": [], "img2img": []}

    @app.get(f"{API}/memory", tags=["lists"])
    def memory() -> dict[str, Any]:
        ram = psutil.virtual_memory()
        process = psutil.Process().memory_info().rss
        cuda: dict[str, Any] = {"error": "no CUDA GPU"}
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            cuda = {"system": {"free": free, "used": total - free, "total": total},
                    "active": {"current": torch.cuda.memory_allocated(), "peak": torch.cuda.max_memory_allocated()}}  # fmt: skip
        return {"ram": {"free": ram.available, "used": ram.total - ram.available, "total": ram.total,
                        "process": process}, "cuda": cuda}  # fmt: skip

    # -- options and PNG info

    @app.get(f"{API}/options", tags=["options"])
    def get_options() -> dict[str, Any]:
        item = _model_item(registry, registry.find_model())
        return {
            "sd_model_checkpoint": item["title"],
            "sd_checkpoint_hash": item["sha256"],
            "sd_checkpoints_limit": registry.cache_size,
            "CLIP_stop_at_last_layers": 1,
            "samples_format": "png",
        }

    @app.post(f"{API}/options", tags=["options"])
    def set_options(options: dict[str, Any]) -> dict[str, Any]:
        ignored = {}
        for key, value in options.items():
            if key == "sd_model_checkpoint":
                registry.set_current(value)
            elif key == "sd_checkpoints_limit":
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16:
                    raise InputError(f"sd_checkpoints_limit must be an integer from 1 to 16, got {value!r}")
                registry.cache_size = value
            elif value not in a1111.OVERRIDES_NEUTRAL.get(key, ()):
                ignored[key] = value
        return {"ignored": ignored}

    @app.post(f"{API}/png-info", tags=["options"])
    def png_info(body: a1111.PNGInfoRequest) -> dict[str, Any]:
        chunks = read_png_text(a1111.decode_image(body.image, "image"), what="image")
        text = chunks.pop("parameters", "")
        parameters: dict[str, Any] = {}
        if text:
            prompt, negative, settings = parse_parameters(text)
            parameters = {"Prompt": prompt, "Negative prompt": negative, **settings}
            width, _, height = settings.get("Size", "").partition("x")
            if width.isdigit() and height.isdigit():
                parameters.update({"Size-1": width, "Size-2": height})
        return {"info": text, "items": chunks, "parameters": parameters}

    if ui:
        import gradio as gr

        from sdlab.ui.app import CSS, THEME, build_ui

        # no allowed_paths: gradio serves only its own cache; no SSR node server, no analytics
        blocks = build_ui(worker)
        app = gr.mount_gradio_app(
            app, blocks, path="/", theme=THEME, css=CSS, ssr_mode=False, footer_links=["api", "settings"],
        )  # fmt: skip
        # gradio checks that a file the page names was uploaded (and not, say, /etc/passwd) only once
        # the Blocks "has launched", which `launch()` sets and mounting does not: set it here
        blocks.has_launched = True
    return Guard(
        app,
        allowed_hosts=allowed_hosts,
        allowed_origins=allowed_origins,
        credentials=credentials or [],
        max_body=max_body,
    )


async def _generate(worker: Worker, body: a1111.Txt2ImgRequest, *, img2img: bool) -> dict[str, Any]:
    request, ignored = a1111.to_request(body, img2img=img2img)
    result: RequestResult = await asyncio.wrap_future(worker.submit(request))
    images = await run_in_threadpool(lambda: [base64.b64encode(g.png()).decode() for g in result.images])
    return {
        "images": images if body.send_images else [],
        "parameters": a1111.echo(body, result),
        "info": json.dumps(jsonable_encoder(a1111.info(result, request, ignored))),
    }


def _model_item(registry: ModelRegistry, entry: ModelEntry) -> dict[str, Any]:
    """A1111's `SDModelItem`; the hash is known once the model has been loaded (A1111 is lazy too)."""
    pipe = registry.cached(entry.name)
    short = pipe.model_hash() if pipe is not None else None
    return {
        "title": f"{entry.name} [{short}]" if short else entry.name,
        "model_name": entry.model_name,
        "hash": short,
        "sha256": None,
        "filename": entry.name,  # relative to its folder: the server's paths are not shown
        "config": None,
    }


def _metadata(path: Path) -> dict[str, Any]:
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # a damaged file still lists; loading it will say what is wrong
        return {}


def _empty_list() -> list:
    """sdlab has none of these (VAE choice, upscalers, hypernetworks, face restorers, styles)."""
    return []


def _b64_png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _error(status: int, kind: str, message: str) -> JSONResponse:
    # A1111's error body: {"error", "detail", "body", "errors"}
    return JSONResponse({"error": kind, "detail": message, "body": "", "errors": message}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InputError)
    async def bad_input(request: Request, err: InputError) -> JSONResponse:
        return _error(422, "InputError", str(err))

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            at = first.get("loc", ("body", "?"))[-1]
            return _error(422, "InputError", f"the request body is not valid JSON (at character {at})")
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
        return _error(422, "InputError", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(QueueFull)
    async def busy(request: Request, err: QueueFull) -> JSONResponse:
        return _error(503, "QueueFull", str(err))

    @app.exception_handler(Exception)
    async def failed(request: Request, err: Exception) -> JSONResponse:
        log.error("%s %s failed: %r", request.method, request.url.path, err)
        return _error(500, type(err).__name__, "the server failed on this request (the error is in its log)")


def _add_docs(app: FastAPI) -> None:
    import swagger_ui_bundle

    app.mount("/docs-static", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="sdlab API",
            swagger_js_url="/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="/docs-static/favicon-32x32.png",
        )
