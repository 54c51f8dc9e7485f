"""Generation: `txt2img`, `img2img`, and the running job's `progress`, `interrupt` and `skip`."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from sdlab.server import a1111
from sdlab.server.responses import GenerationResponse, ProgressResponse, ProgressState
from sdlab.server.routes import API, worker
from sdlab.service.run import RequestResult
from sdlab.service.worker import Worker

router = APIRouter(prefix=API, tags=["generation"])
TheWorker = Annotated[Worker, Depends(worker)]


DISCONNECT_POLL = 0.25  # seconds between checks that a waiting client is still there


@router.post("/txt2img", response_model=GenerationResponse)
async def txt2img(body: a1111.Txt2ImgRequest, w: TheWorker, http: Request) -> GenerationResponse | Response:
    return await _generate(w, body, http, img2img=False)


@router.post("/img2img", response_model=GenerationResponse)
async def img2img(body: a1111.Img2ImgRequest, w: TheWorker, http: Request) -> GenerationResponse | Response:
    return await _generate(w, body, http, img2img=True)


@router.get("/progress")
async def progress(w: TheWorker, skip_current_image: bool = False) -> ProgressResponse:
    p = w.progress()
    image = None if skip_current_image else await run_in_threadpool(p.preview_image)
    state = ProgressState(
        skipped=p.skipped, interrupted=p.interrupted, job=p.job, job_count=p.job_count,
        job_timestamp=p.job_timestamp, job_no=p.job_no, sampling_step=p.sampling_step,
        sampling_steps=p.sampling_steps, queued=p.queued,
    )  # fmt: skip
    return ProgressResponse(
        progress=p.fraction, eta_relative=p.eta, state=state,
        current_image=_b64_png(image) if image is not None else None, current_task=p.job or None,
    )  # fmt: skip


@router.post("/interrupt")
async def interrupt(w: TheWorker) -> dict:
    """End the running job after its current step; the images so far are returned (as in A1111)."""
    w.interrupt()
    return {}


@router.post("/skip")
async def skip(w: TheWorker) -> dict:
    """End the running batch after its current step and go on with the next."""
    w.skip()
    return {}


async def _generate(
    w: Worker, body: a1111.Txt2ImgRequest, http: Request, *, img2img: bool
) -> GenerationResponse | Response:
    request, ignored = a1111.to_request(body, img2img=img2img, options=w.registry.options)
    future = w.submit(request)
    waiter = asyncio.wrap_future(future)
    while not (await asyncio.wait({waiter}, timeout=DISCONNECT_POLL))[0]:
        if await http.is_disconnected():  # the client has gone: its job leaves the queue, or stops
            w.abandon(future)
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    result: RequestResult = waiter.result()
    fmt = a1111.SAMPLES_FORMATS[w.registry.options.get("samples_format", "png")]  # A1111's encoder option
    images = await run_in_threadpool(
        lambda: [base64.b64encode(g.encoded(fmt)).decode() for g in result.images]
    )
    return GenerationResponse(
        images=images if body.send_images else [],
        parameters=a1111.echo(body, result),
        info=json.dumps(jsonable_encoder(a1111.info(result, request, ignored))),
    )


def _b64_png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
