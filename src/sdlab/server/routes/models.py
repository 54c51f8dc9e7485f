"""What there is: samplers, schedule types, checkpoints, LoRAs, embeddings, and A1111's other lists."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from sdlab.embeddings import embedding_fits, read_embedding
from sdlab.errors import InputError
from sdlab.loading.checkpoint import safetensors_metadata
from sdlab.sampling.hires import LATENT_UPSCALE_MODES, PIXEL_UPSCALERS
from sdlab.sampling.schedulers import SAMPLER_ALIASES, SCHEDULE_TYPES, SCHEDULERS
from sdlab.server.responses import (
    EmbeddingItem,
    EmbeddingsResponse,
    LoraItem,
    SamplerItem,
    SchedulerItem,
    ScriptsList,
    SDModelItem,
    UpscalerItem,
)
from sdlab.server.routes import API, registry
from sdlab.service.registry import ModelEntry, ModelRegistry

router = APIRouter(prefix=API, tags=["models"])
TheRegistry = Annotated[ModelRegistry, Depends(registry)]
# A1111 lists sdlab has nothing in (VAE choice, hypernetworks, face restorers, styles)
EMPTY_LISTS = ("sd-vae", "hypernetworks", "face-restorers", "realesrgan-models", "prompt-styles")


@router.get("/samplers")
def samplers() -> list[SamplerItem]:
    return [SamplerItem(name=s.a1111, aliases=SAMPLER_ALIASES[n], options={}) for n, s in SCHEDULERS.items()]


@router.get("/schedulers")
def schedulers() -> list[SchedulerItem]:
    return [
        SchedulerItem(name=name, label=label, default_rho=7.0 if name == "karras" else -1)
        for name, label in SCHEDULE_TYPES.items()
    ]


@router.get("/upscalers")
def upscalers(r: TheRegistry) -> list[UpscalerItem]:
    """The hires fix's pixel upscalers (A1111's order: None, Lanczos, Nearest, then the models by name)."""
    built_in = [UpscalerItem(name=name) for name in PIXEL_UPSCALERS]
    return built_in + [
        UpscalerItem(name=name, model_name=name, model_path=name)
        for name in sorted(r.upscalers(), key=str.lower)
    ]


@router.get("/latent-upscale-modes")
def latent_upscale_modes() -> list[dict[str, str]]:
    return [{"name": name} for name in LATENT_UPSCALE_MODES]


@router.get("/sd-models")
def sd_models(r: TheRegistry) -> list[SDModelItem]:
    return [model_item(r, entry) for entry in r.models()]


@router.post("/refresh-checkpoints")
@router.post("/refresh-loras")
@router.post("/refresh-embeddings")
def refresh(r: TheRegistry) -> dict:
    """Scan the model, LoRA and embedding folders again."""
    r.refresh()
    return {}


@router.get("/loras")
def loras(r: TheRegistry) -> list[LoraItem]:
    return [
        LoraItem(name=name, alias=r.lora_alias(name), path=name, metadata=safetensors_metadata(path))
        for name, path in r.loras().items()
    ]


@router.get("/embeddings")
def embeddings(r: TheRegistry) -> EmbeddingsResponse:
    """The embedding folder's files: `loaded` those the current model can take, `skipped` the others (another
    family or width, or not an embedding), as A1111 splits them."""
    loaded, skipped = {}, {}
    pipe = r.cached(r.find_model().name)
    for name, path in r.embeddings().items():
        try:
            _, vectors = read_embedding(path, allow_pickle=r.allow_pickle)
            if isinstance(vectors, dict):  # SDXL: A1111 reports the first encoder's vectors
                vectors = vectors.get("clip_l", next(iter(vectors.values())))
            if vectors.ndim == 0:
                raise InputError("not a vector")
        except (InputError, ValueError, TypeError, RuntimeError):  # one bad file does not hide the rest
            skipped[name] = EmbeddingItem(vectors=0)
            continue
        vectors = vectors.reshape(-1, vectors.shape[-1])
        item = EmbeddingItem(shape=int(vectors.shape[1]), vectors=int(vectors.shape[0]))
        fits = pipe is None or embedding_fits(pipe, path, allow_pickle=r.allow_pickle)
        (loaded if fits else skipped)[name] = item
    return EmbeddingsResponse(loaded=loaded, skipped=skipped)


@router.get("/scripts")
def scripts() -> ScriptsList:
    return ScriptsList()


def _empty_list() -> list:
    """sdlab has none of these."""
    return []


for _route in EMPTY_LISTS:
    router.add_api_route(f"/{_route}", _empty_list, methods=["GET"], response_model=list[Any])


def model_item(r: ModelRegistry, entry: ModelEntry) -> SDModelItem:
    """A1111's `SDModelItem`; the hash is known once the model has been loaded (A1111 is lazy too)."""
    pipe = r.cached(entry.name)
    short = pipe.model_hash() if pipe is not None else None
    return SDModelItem(
        title=f"{entry.name} [{short}]" if short else entry.name, model_name=entry.model_name, hash=short,
        filename=entry.name,
    )  # fmt: skip
