"""The HTTP API's response bodies, named as AUTOMATIC1111 names them (its `modules/api/models.py`).

Clients (webuiapi, editor plugins, bots) read these fields; `/docs` shows each one. sdlab's own
additions are marked "sdlab:" in their descriptions.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class GenerationResponse(BaseModel):
    """`/txt2img` and `/img2img` (A1111's `TextToImageResponse` and `ImageToImageResponse`)."""

    images: list[str] = Field(description="base64 PNGs, each with its `parameters` and `sdlab` text chunks")
    parameters: dict[str, Any] = Field(
        description="the request as received, with what the model decided filled in"
    )
    info: str = Field(
        description="JSON: A1111's `Processed.js()` (seeds, infotexts), plus sdlab's `ignored` fields"
    )


class ProgressState(BaseModel):
    skipped: bool
    interrupted: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int
    queued: int = Field(description="sdlab: requests waiting behind the running one")


class ProgressResponse(BaseModel):
    progress: float = Field(description="share of the running job done, 0 to 1")
    eta_relative: float = Field(description="seconds left, extrapolated")
    state: ProgressState
    current_image: str | None = Field(None, description="base64 PNG preview of the current latents")
    textinfo: str | None = None
    current_task: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str = Field(description="relative to its folder: the server's paths are never shown")
    config: str | None = None


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str = Field(description="the name, not a path on the server")
    metadata: dict[str, Any]


class UpscalerItem(BaseModel):
    """A1111's `UpscalerItem`: a hires-fix upscaler; `scale` is only known once a model is loaded."""

    name: str
    model_name: str | None = None
    model_path: str | None = Field(None, description="the name, not a path on the server")
    model_url: str | None = None
    scale: float | None = None


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int | None = None
    vectors: int


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem]


class ScriptsList(BaseModel):
    txt2img: list[str] = []
    img2img: list[str] = []


class MemoryResponse(BaseModel):
    ram: dict[str, Any] = Field(description="bytes: free, used, total, and this process's resident size")
    cuda: dict[str, Any] = Field(description="bytes per CUDA allocator statistic, or an error")


class OptionsResponse(BaseModel):
    """The options sdlab has (A1111 has many more; setting one of those is answered in `ignored`)."""

    sd_model_checkpoint: str
    sd_checkpoint_hash: str | None = None
    sd_checkpoints_limit: int
    CLIP_stop_at_last_layers: int = 1  # noqa: N815 (A1111's name)
    eta_noise_seed_delta: int = 0
    samples_format: str = "png"
    sdlab_compile: bool = Field(
        False, description="sdlab: models are compiled (torch.compile) when they load"
    )
    # what one request may cost (read only; `sdlab serve --max-*`, `--request-timeout`); null: no limit
    sdlab_max_pixels: int | None = Field(None, description="sdlab: width x height of one image")
    sdlab_max_steps: int | None = Field(None, description="sdlab: denoising steps of one pass")
    sdlab_max_prompt_tokens: int | None = Field(
        None, description="sdlab: tokens of one prompt, in 75-token chunks"
    )
    sdlab_max_work: float | None = Field(
        None, description="sdlab: megapixels x steps x images x UNet evaluations per step, per request"
    )
    sdlab_request_timeout: float | None = Field(None, description="sdlab: seconds a request may run")


class SetOptionsResponse(BaseModel):
    ignored: dict[str, Any] = Field(description="sdlab: options given that sdlab does not have")


class PNGInfoResponse(BaseModel):
    info: str = Field(description="the `parameters` text")
    items: dict[str, Any] = Field(description="the image's other text chunks (sdlab's recipe among them)")
    parameters: dict[str, Any] = Field(description="the `parameters` text parsed: Prompt, Steps, Seed, ...")
