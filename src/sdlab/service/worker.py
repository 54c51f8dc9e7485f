"""The worker: one thread that owns the models and runs requests one at a time, from a bounded queue.

HTTP handlers and UI events never touch a model: they `submit` a request and wait for its future.
While a request runs, the worker publishes its progress (batch, step, ETA, the latest latents for a
cheap preview) and honours two cooperative signals through the sampling loop's step callback:
`interrupt` ends the job after the current step (the images so far are returned, as in A1111) and
`skip` ends the current batch and goes on with the next.

A request is priced against the server's `Limits` before it is queued. While it runs, every block of the
UNet and the VAE checks for an interrupt and for the request's time limit, so a job stops within one block
even inside a single long step (a 4096x4096 step 0) or inside the VAE decode; a batch stopped that way has
no image. `abandon` stops a job whose client has gone: it is taken out of the queue, or interrupted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import PIL.Image
import torch

from sdlab.errors import InputError
from sdlab.pipeline import Pipeline
from sdlab.sampling.loop import StopSampling
from sdlab.service.limits import Limits
from sdlab.service.preview import DecoderPreview, LatentPreview
from sdlab.service.registry import ModelRegistry
from sdlab.service.request import GenerationRequest
from sdlab.service.run import RequestResult, run_request

log = logging.getLogger("sdlab.worker")


# how long an interrupt waits for the step's end before stopping inside the step: this many seconds, plus 1.5x the
# last step's time (a step as long as the others ends as A1111's do, with its image; a step 0 of minutes does not)
INTERRUPT_GRACE = 1.0


class QueueFull(RuntimeError):
    """The worker's queue holds `max_queue` requests already; the caller should try again later."""


@dataclass
class Progress:
    """What the running job has done, as A1111's `/progress` reports it (all zeros when idle)."""

    job: str = ""  # the running job's id, "" when idle
    job_timestamp: str = ""  # when it started, A1111's "%Y%m%d%H%M%S"
    job_count: int = 0  # batches in the job
    job_no: int = 0  # the batch running now, from 0
    sampling_step: int = 0  # steps done in this batch
    sampling_steps: int = 0  # steps in this batch
    started: float = 0.0  # time.monotonic() at the job's start
    interrupted: bool = False
    skipped: bool = False
    interrupt_step: int | None = None  # steps done in the batch when the interrupt arrived
    interrupt_reason: str = ""  # "interrupt", "the client went away", or the time limit's sentence
    interrupt_time: float = 0.0  # time.monotonic() when it arrived
    acknowledged: bool = False  # the loop stopped at a step boundary: its latents are being decoded
    hard_stop: bool = False  # stop inside the current step or decode, with no image for this batch
    deadline: float | None = None  # time.monotonic() past which the job is stopped
    step_seconds: float = 0.0  # how long the last denoising step took
    step_ended: float = 0.0  # time.monotonic() when it ended (0: no step yet; the job's start stands in)
    queued: int = 0  # jobs waiting behind this one
    latents: torch.Tensor | None = field(default=None, repr=False)  # image 0's latents after the last step
    preview: LatentPreview | DecoderPreview | None = field(default=None, repr=False)
    decoded: PIL.Image.Image | None = field(
        default=None, repr=False
    )  # a DecoderPreview's image, by the worker

    @property
    def fraction(self) -> float:
        """Share of the job done, 0 to 1."""
        if not self.job_count or not self.sampling_steps:
            return 0.0
        return min(1.0, (self.job_no + self.sampling_step / self.sampling_steps) / self.job_count)

    @property
    def eta(self) -> float:
        """Seconds left, extrapolated from the time so far (A1111's `eta_relative`)."""
        done = self.fraction
        if done <= 0:
            return 0.0
        elapsed = time.monotonic() - self.started
        return elapsed / done - elapsed

    def preview_image(self) -> PIL.Image.Image | None:
        """The current preview: a tiny decoder's image (decoded on the worker thread, which owns the models),
        or the linear map's, computed here on the CPU."""
        if self.decoded is not None or self.latents is None or self.preview is None:
            return self.decoded
        return self.preview.image(self.latents)


@dataclass
class _Job:
    task: GenerationRequest | Callable[[Worker], Any]
    future: Future
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


class Worker:
    """Runs requests on `registry`'s models in one thread; at most `max_queue` wait behind the running one."""

    def __init__(
        self, registry: ModelRegistry, *, max_queue: int = 16, preview_decoder: str | None = None,
        limits: Limits | None = None,
    ) -> None:  # fmt: skip
        """`preview_decoder`: a TAESD folder that decodes the live previews of the models whose latents it
        reads, or `tiny`: each model's own tiny decoder (others keep the fitted linear preview). `limits`:
        what one request may cost (`sdlab.service.limits`; None: no limits, as for a library user)."""
        self.registry = registry
        self.limits = limits or Limits()
        self.max_queue = max_queue
        self.preview_decoder = preview_decoder
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._progress = Progress()
        self._previews: dict[str, LatentPreview | DecoderPreview] = {}
        self._thread = threading.Thread(target=self._loop, name="sdlab-worker", daemon=True)
        self._thread.start()

    # -- what callers use

    def submit(self, task: GenerationRequest | Callable[[Worker], Any]) -> Future:
        """Queue a request (or a function of the worker, run on its thread); returns its future.

        A request is validated and priced here (`Limits.check`), so bad input fails at once instead of after
        the queue. Raises `InputError` (`LimitExceeded`) for a bad request and `QueueFull` when the queue is full.
        """
        if isinstance(task, GenerationRequest):
            task.validate()
            task = task.replace(
                model=self.registry.find_model(task.model).name
            )  # priced and run on one model
            self.limits.check(task, **self._model_defaults(task.model))
        job = _Job(task, Future())
        job.future.job_id = job.id  # type: ignore[attr-defined]  # matches Progress.job while it runs
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(
                f"the queue is full ({self.max_queue} requests are waiting); try again in a moment"
            ) from None
        return job.future

    def run(self, task: GenerationRequest | Callable[[Worker], Any], timeout: float | None = None) -> Any:
        """`submit(task)` and wait for its result (or its exception)."""
        return self.submit(task).result(timeout)

    def interrupt(self, reason: str = "interrupt", *, hard: bool = False) -> None:
        """End the running job after its current step (its latents so far are decoded, as in A1111), or
        within one UNet or VAE layer when the step or the decode goes on past `INTERRUPT_GRACE` seconds plus 1.5x the
        last step's time;
        later batches are not run. `hard` (and a second interrupt) stops within one block at once, with no
        image for the batch. Idle: nothing."""
        self._interrupt(reason, hard=hard)

    def _interrupt(self, reason: str, *, hard: bool, job: str | None = None) -> None:
        """`interrupt`, of job `job` only when given (checked under the same lock)."""
        with self._lock:
            p = self._progress
            if not p.job or (job is not None and p.job != job):
                return
            if p.interrupted or hard:
                p.hard_stop = True
            if not p.interrupted:  # the time first: the worker thread reads these without the lock
                p.interrupt_time, p.interrupt_step, p.interrupt_reason = (
                    time.monotonic(),
                    p.sampling_step,
                    reason,
                )
                p.interrupted = True

    def abandon(self, future: Future) -> None:
        """The client of `future` has gone: take its job out of the queue, or interrupt it if it runs."""
        future.abandoned = True  # type: ignore[attr-defined]  # a job that starts after this never runs
        if future.cancel():
            return
        self._interrupt("the client went away", hard=True, job=getattr(future, "job_id", None))

    def skip(self) -> None:
        """End the running batch after its current step and go on with the next. Idle: nothing."""
        with self._lock:
            if self._progress.job:
                self._progress.skipped = True

    def progress(self) -> Progress:
        """A snapshot of the running job's progress."""
        with self._lock:
            return replace(self._progress, queued=self._queue.qsize())

    def close(self, timeout: float | None = None) -> None:
        """Stop after the running job; queued jobs still run first."""
        self._queue.put(None)
        self._thread.join(timeout)

    # -- the worker thread

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            if getattr(job.future, "abandoned", False) or not job.future.set_running_or_notify_cancel():
                if not job.future.cancelled() and not job.future.done():
                    job.future.set_exception(InputError("the client went away before the request ran"))
                continue  # cancelled while it waited (its client went away)
            with self._lock:
                started = time.monotonic()
                timeout = self.limits.request_timeout if isinstance(job.task, GenerationRequest) else None
                self._progress = Progress(
                    job=job.id, job_timestamp=time.strftime("%Y%m%d%H%M%S"), started=started,
                    deadline=None if timeout is None else started + timeout,
                )  # fmt: skip
            try:
                if isinstance(job.task, GenerationRequest):
                    result = self._generate(job.task)
                else:
                    result = job.task(self)
                outcome: tuple[Any, BaseException | None] = (result, None)
            except InputError as err:
                outcome = (None, err)
            except Exception as err:  # one request's failure never takes the worker down
                log.exception("request %s failed", job.id)
                outcome = (None, err)
            finally:
                with self._lock:
                    self._progress = Progress()
            result, error = outcome
            if error is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(error)

    def _generate(self, request: GenerationRequest) -> RequestResult:
        entry = self.registry.find_model(request.model)
        request = request.replace(model=entry.name)  # pinned: the current model may change meanwhile
        preview = self._preview(entry.name, self.registry.pipeline(entry))
        with self._lock:
            self._progress.job_count = request.batch_count
            self._progress.preview = preview
        with self._stop_points(self.registry.pipeline(entry)):
            result = run_request(self.registry, request, on_step=self._on_step, keep_going=self._keep_going)
        with self._lock:
            result.extra["job_timestamp"] = self._progress.job_timestamp
            if self._progress.interrupted:
                result.extra["interrupted"] = {
                    "received_at_step": self._progress.interrupt_step,
                    "stopped_at_step": self._progress.sampling_step,
                    "reason": self._progress.interrupt_reason,
                }
        return result

    def _model_defaults(self, name: str | None) -> dict[str, int | None]:
        """The model's own size and steps for pricing a request that leaves them out (None: not loaded)."""
        pipe = self.registry.cached(self.registry.find_model(name).name)
        if pipe is None:
            return {}
        return {"size": pipe.default_size, "steps": pipe.recommended.num_inference_steps}

    @contextmanager
    def _stop_points(self, pipe: Pipeline) -> Iterator[None]:
        """While a job runs, every convolution, linear layer and normalization of the UNet and the VAE first
        checks for an interrupt and the time limit, and raises `StopSampling` (forward pre-hooks, a few hundred
        Python calls a step; a compiled UNet is left alone, as hooks would make it recompile). A stop waits at
        most for one such layer, or for one attention product, which no hook can split."""
        kinds = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm, torch.nn.LayerNorm)
        models = [pipe.vae] if pipe.compiled else [pipe.unet, pipe.vae]
        handles = [m.register_forward_pre_hook(self._check_stop) for model in models for m in model.modules()
                   if isinstance(m, kinds)]  # fmt: skip
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _check_stop(self, module: Any, args: Any) -> None:
        p, now = self._progress, time.monotonic()
        if p.deadline is not None and now > p.deadline and not p.hard_stop:
            limit = f"the time limit of {self.limits.request_timeout:g} s (sdlab serve --request-timeout)"
            self.interrupt(limit, hard=True)
        grace = INTERRUPT_GRACE + 1.5 * p.step_seconds
        waited = p.interrupted and not p.acknowledged and now - p.interrupt_time > grace
        if p.hard_stop or waited:
            raise StopSampling

    def _preview(self, name: str, pipe: Pipeline) -> LatentPreview | DecoderPreview:
        if name not in self._previews:  # made once per model; those of evicted models are dropped
            self._previews = {k: v for k, v in self._previews.items() if k in self.registry.loaded()}
            self._previews[name] = self._decoder_preview(pipe) or LatentPreview.fit(pipe)
        return self._previews[name]

    def _decoder_preview(self, pipe: Pipeline) -> DecoderPreview | None:
        if self.preview_decoder is None:
            return None
        from sdlab.loading.decoder import check_decoder_fits, load_vae_decoder, vae_decoder_folder

        try:
            folder = vae_decoder_folder(self.preview_decoder, pipe.source)
            decoder = load_vae_decoder(folder, pipe.device, pipe.dtype)
            check_decoder_fits(
                decoder, pipe.vae.config.latent_channels, pipe.vae_scale_factor, self.preview_decoder
            )
        except InputError:
            return None  # unreadable, or made for another latent space: this model keeps the linear preview
        return DecoderPreview(decoder)

    def _on_step(self, batch: int, step: int, total: int, latents: torch.Tensor) -> None:
        latest = latents[0].detach().to("cpu", copy=True)  # waits for the device: outside the lock
        preview = self._progress.preview
        decoded = (
            preview.image(latents[0]) if isinstance(preview, DecoderPreview) else None
        )  # this thread only
        with self._lock:
            p = self._progress
            p.job_no, p.sampling_step, p.sampling_steps = batch, step + 1, total
            p.latents, p.decoded = latest, decoded
            now = time.monotonic()
            p.step_seconds = now - (p.step_ended or p.started)  # step 1's includes the prompt encoding
            p.step_ended = now
            if step + 1 == total:
                p.acknowledged = True  # sampling is done: a soft interrupt lets the decode finish its image
            if p.interrupted and not p.hard_stop:
                p.acknowledged = True  # the loop decodes what it has; the VAE's blocks let it
                raise StopSampling
            if p.skipped:
                p.skipped = False
                raise StopSampling
        self._check_stop(None, None)  # the time limit, a hard stop

    def _keep_going(self) -> bool:
        with self._lock:
            return not self._progress.interrupted
