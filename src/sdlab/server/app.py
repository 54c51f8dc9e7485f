"""`sdlab serve`'s FastAPI app: AUTOMATIC1111's HTTP API over sdlab's request layer.

Routes live in `server.routes` (generation, models, options, utilities), one `APIRouter` each, with
A1111's response bodies (`server.responses`). Handlers turn an A1111 body into a `GenerationRequest`
(`server.a1111`), hand it to the one `Worker` that owns the models, and encode the result. Every
refusal is one sentence: bad input 422, a full queue 503, and the guard's 401/403/413
(`server.security`). An exception inside a request is logged on the server, answered with 500, and
the next request is served as usual.
"""

from __future__ import annotations

import logging
import warnings

import PIL.Image
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdlab.errors import InputError
from sdlab.images import MAX_PIXELS
from sdlab.server.routes import generation, models, options, utilities
from sdlab.server.security import LOOPBACK_HOSTS, Guard
from sdlab.service import ModelRegistry
from sdlab.service.worker import QueueFull, Worker
from sdlab.version import __version__

log = logging.getLogger("sdlab.server")
# gradio routes the UI does not use: its monitoring dashboard (served even with monitoring off) and the
# dev-mode reload stream
GRADIO_CLOSED = ("/monitoring", "/gradio_api/dev", "/dev")


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
    app = FastAPI(
        title="sdlab",
        version=__version__,
        description="AUTOMATIC1111-compatible Stable Diffusion API, served by sdlab.",
        docs_url=None,  # served below from local files: the docs page loads nothing from a CDN
        redoc_url=None,
    )
    app.state.worker = worker or Worker(registry)
    if allowed_origins:  # A1111's --cors-allow-origins: browsers on those origins may call the API
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(allowed_origins), allow_methods=["*"], allow_headers=["*"],
            allow_credentials=True,
        )  # fmt: skip
    for part in (generation, models, options, utilities):
        app.include_router(part.router)
    _add_error_handlers(app)
    _add_docs(app)
    if ui:
        app = _mount_ui(app)
    return Guard(
        app, allowed_hosts=allowed_hosts, allowed_origins=allowed_origins, credentials=credentials or [],
        max_body=max_body, closed_paths=GRADIO_CLOSED if ui else (),
    )  # fmt: skip


def _mount_ui(app: FastAPI) -> FastAPI:
    """The gradio UI at /, over the same worker."""
    import gradio as gr

    from sdlab.ui.app import CSS, THEME, build_ui

    # no allowed_paths: gradio serves only its own cache; no SSR node server, no analytics
    worker = app.state.worker
    blocks = build_ui(worker).queue(
        max_size=worker.max_queue
    )  # the UI waits in a queue as bounded as the API's
    # images gradio decodes itself (uploads) are refused past sdlab's decompression-bomb limit, as the API's are
    PIL.Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    warnings.filterwarnings("error", category=PIL.Image.DecompressionBombWarning)
    app = gr.mount_gradio_app(
        app, blocks, path="/", theme=THEME, css=CSS, ssr_mode=False, footer_links=["api", "settings"],
    )  # fmt: skip
    # gradio checks that a file the page names was uploaded (and not, say, /etc/passwd) only once
    # the Blocks "has launched", which `launch()` sets and mounting does not: set it here
    blocks.has_launched = True
    return app


def _error(status: int, kind: str, message: str) -> JSONResponse:
    # A1111's error body: {"error", "detail", "body", "errors"}
    return JSONResponse({"error": kind, "detail": message, "body": "", "errors": message}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InputError)
    async def bad_input(request: Request, err: InputError) -> JSONResponse:
        return _error(422, "InputError", request.app.state.worker.registry.public(str(err)))

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            at = first.get("loc", ("body", "?"))[-1]
            return _error(422, "InputError", f"the request body is not valid JSON (at character {at})")
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
        return _error(422, "InputError", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if (
            err.status_code == 400 and err.detail == "There was an error parsing the body"
        ):  # FastAPI's own words
            cause = err.__cause__
            why = {RecursionError: "it is nested too deeply", ValueError: "a number in it is too long"}
            reason = next(
                (text for kind, text in why.items() if isinstance(cause, kind)), "it is not valid JSON"
            )
            return _error(422, "InputError", f"the request body cannot be read: {reason}")
        return _error(err.status_code, type(err).__name__, str(err.detail))

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
