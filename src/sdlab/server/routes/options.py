"""Options: the current model and the model cache's size, as A1111's `/options` reads and sets them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from sdlab.errors import InputError
from sdlab.server import a1111
from sdlab.server.responses import OptionsResponse, SetOptionsResponse
from sdlab.server.routes import API, registry, worker
from sdlab.server.routes.models import model_item
from sdlab.service.registry import ModelRegistry
from sdlab.service.worker import Worker

router = APIRouter(prefix=API, tags=["options"])
TheRegistry = Annotated[ModelRegistry, Depends(registry)]
TheWorker = Annotated[Worker, Depends(worker)]


@router.get("/options")
def get_options(w: TheWorker) -> OptionsResponse:
    r = w.registry
    item = model_item(r, r.find_model())
    return OptionsResponse(
        sd_model_checkpoint=item.title,
        sd_checkpoint_hash=item.sha256,
        sd_checkpoints_limit=r.cache_size,
        sdlab_compile=r.compile,
        **w.limits.report(),
        **{**a1111.OPTION_DEFAULTS, **r.options},  # samples_format too, where set
    )


@router.post("/options")
def set_options(options: dict[str, Any], r: TheRegistry) -> SetOptionsResponse:
    """Set `sd_model_checkpoint` (loads it), `sd_checkpoints_limit`, `sdlab_compile` (compile models as
    they load: slow first calls, faster later ones), and the generation options every request then uses
    (`CLIP_stop_at_last_layers`, `eta_noise_seed_delta`, `samples_format`); any other option is `ignored`.
    All or nothing: one bad value is a 422 and no option changes."""
    # every value checked first, then all applied: a request answered 422 changes nothing (issue 22)
    ignored, apply = {}, []
    for key, value in options.items():
        if key == "sd_model_checkpoint":
            entry = r.find_model(value)  # InputError for an unknown name
            apply.append(lambda entry=entry: r.set_current(entry.name))
        elif key == "sdlab_compile":
            if not isinstance(value, bool):
                raise InputError(f"sdlab_compile must be true or false, got {value!r}")
            apply.append(lambda value=value: setattr(r, "compile", value))
        elif key == "sd_checkpoints_limit":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16:
                raise InputError(f"sd_checkpoints_limit must be an integer from 1 to 16, got {value!r}")
            apply.append(lambda value=value: setattr(r, "cache_size", value))
        elif key in a1111.GENERATION_OPTIONS or key == "samples_format":
            checked = (
                a1111.check_samples_format(value)
                if key == "samples_format"
                else a1111.check_option(key, value)
            )
            apply.append(lambda key=key, checked=checked: r.options.__setitem__(key, checked))
        elif value not in a1111.OVERRIDES_NEUTRAL.get(key, ()):
            ignored[key] = value
    for change in apply:
        change()
    return SetOptionsResponse(ignored=ignored)
