"""Loading a single-file Stable Diffusion 1.x / 2.x / SDXL checkpoint (CompVis / A1111 / ComfyUI layout).

diffusers does the key conversion (`from_single_file`, `create_diffusers_clip_model_from_ldm`); sdlab picks
the architecture config, which it ships in `loading/configs/<name>/` so that nothing is fetched from a hub.

How the config is chosen when `config` is not given:
    - SDXL's UNet has an added embedding (`label_emb`); its refiner keeps OpenCLIP bigG as embedder 0
      (`conditioner.embedders.0.model.*`) where the base keeps CLIP ViT-L there and bigG as embedder 1,
      and a UNet-only file tells them apart by the added embedding's width (2816 base, 2560 refiner);
    - otherwise key shapes decide SD 1.x vs 2.x and inpainting (diffusers' `infer_diffusers_model_type`);
    - an SD 2.x UNet alone does not say whether it predicts epsilon (2.x-base, 512 px) or v (2.x-768).
      `detect_model_type` answers "sd2-v", the common case (2.1-768), and `load_single_file` then runs
      A1111's test (`predicts_v`: one UNet call at t=999 on a constant input) and switches to "sd2" when
      the model predicts epsilon. `config="sd2"` or `config="sd2-v"` skips the test.

EMA weights: like diffusers (`extract_ema=False`) and A1111, the non-EMA `model.diffusion_model.*` weights
are loaded and any `model_ema.*` copy is ignored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES
from diffusers.loaders.single_file_utils import (
    SingleFileComponentError,
    create_diffusers_clip_model_from_ldm,
    infer_diffusers_model_type,
    is_open_clip_model,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sdlab.errors import InputError
from sdlab.loading.checkpoint import read_state_dict
from sdlab.loading.parts import FLAGS, load_part
from sdlab.loading.tokenizer import OPEN_CLIP_PAD_TOKEN, clip_tokenizer
from sdlab.pipeline import Pipeline

CONFIGS_DIR = Path(__file__).parent / "configs"
MODEL_TYPES = ("sd15", "sd15-inpaint", "sd2", "sd2-v", "sd2-inpaint", "sdxl", "sdxl-inpaint", "sdxl-refiner")
_CONFIG_FILES = ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json")
_TEXT_CONFIGS = ("text_encoder/config.json", "text_encoder_2/config.json")  # one or both
# diffusers' model types -> sdlab's shipped configs; "v2" is refined by `predicts_v` at load time.
_FROM_DIFFUSERS = {"v1": "sd15", "inpainting": "sd15-inpaint", "v2": "sd2-v", "inpainting_v2": "sd2-inpaint"}
_UNET_PROBE_KEY = "model.diffusion_model.input_blocks.0.0.weight"
_BARE_UNET_KEY = _UNET_PROBE_KEY.removeprefix("model.diffusion_model.")
_SDXL_PROBE_KEY = "model.diffusion_model.label_emb.0.0.weight"  # SDXL's added (pooled text + size) embedding
_SDXL_REFINER_ADDED_WIDTH = 2560  # 5 size ids x 256 + bigG's 1280; the base has 6 x 256 + 1280 = 2816
# SDXL's text encoders in the file: CLIP ViT-L (transformers names) and OpenCLIP bigG (open_clip names)
SDXL_EMBEDDERS = {
    "text_encoder": "conditioner.embedders.0.transformer.",
    "text_encoder_2": "conditioner.embedders.1.model.",
}
SDXL_REFINER_EMBEDDERS = {"text_encoder_2": "conditioner.embedders.0.model."}

logger = logging.getLogger(__name__)


def detect_model_type(state_dict: dict[str, torch.Tensor], *, source: str = "The checkpoint") -> str:
    """One of `MODEL_TYPES`, from the keys and shapes alone (meta tensors are fine).

    An SD 2.x non-inpainting UNet gives "sd2-v" (see the module docstring for how loading refines it).
    """
    if _UNET_PROBE_KEY not in state_dict:
        raise InputError(f"{source} has no Stable Diffusion UNet weights (no {_UNET_PROBE_KEY}).")
    if "edm_mean" in state_dict:  # SDXL's architecture with an EDM schedule and a normalised latent space
        raise InputError(
            f"{source} looks like Playground v2.5 (an EDM model with SDXL's architecture); sdlab loads SD 1.x, "
            "2.x and SDXL checkpoints, not its EDM schedule"
        )
    if _SDXL_PROBE_KEY in state_dict:
        refiner = SDXL_REFINER_EMBEDDERS["text_encoder_2"] + "positional_embedding" in state_dict
        if not any(k.startswith("conditioner.") for k in state_dict):  # a UNet-only file
            refiner = state_dict[_SDXL_PROBE_KEY].shape[1] == _SDXL_REFINER_ADDED_WIDTH
        if refiner:
            return "sdxl-refiner"
        return "sdxl-inpaint" if state_dict[_UNET_PROBE_KEY].shape[1] == 9 else "sdxl"
    diffusers_type = infer_diffusers_model_type(state_dict)
    if diffusers_type not in _FROM_DIFFUSERS:
        raise InputError(
            f"{source} looks like a {diffusers_type!r} model; sdlab loads SD 1.x, 2.x and SDXL checkpoints "
            f"({', '.join(MODEL_TYPES)}), or pass config= a diffusers folder that describes it."
        )
    return _FROM_DIFFUSERS[diffusers_type]


def config_dir(name: str) -> Path:
    """The shipped diffusers config folder for a model type."""
    if name not in MODEL_TYPES:
        raise InputError(
            f"Unknown model config {name!r}; expected one of {', '.join(MODEL_TYPES)} or a folder."
        )
    return CONFIGS_DIR / name


def load_single_file(
    path: str | Path,
    *,
    config: str | Path | None = None,
    allow_pickle: bool = False,
    dtype: torch.dtype = torch.float32,
    parts: dict[str, Path] | None = None,
) -> Pipeline:
    """Load a single-file SD checkpoint into a `Pipeline` on the CPU.

    `config` is a shipped config name (`MODEL_TYPES`) or a diffusers-format folder whose `unet/`, `vae/`,
    `text_encoder/` and `scheduler/` configs describe the checkpoint (and, optionally, a `tokenizer/`).
    `parts` {"vae" | "text_encoder" | "text_encoder_2": file or folder} are loaded from their own files
    (`sdlab.loading.parts`) in place of the checkpoint's, which may then lack them.
    """
    # 1. Read the weights and pick the architecture
    path = Path(path)
    state_dict = read_state_dict(path, allow_pickle=allow_pickle, dtype=dtype)  # cast as read: one copy
    if _BARE_UNET_KEY in state_dict:  # a UNet alone without its prefix, as ComfyUI's models/unet may hold it
        state_dict = {f"model.diffusion_model.{k}": v for k, v in state_dict.items()}
    if config is None:
        model_type = detect_model_type(state_dict, source=f"Checkpoint {path}")
        cfg_dir = config_dir(model_type)
    else:
        model_type, cfg_dir = None, _resolve_config(config)

    # 2. UNet; an SD 2.x guess of v-prediction is checked by running it once
    unet = _load_component(UNet2DConditionModel, "unet", state_dict, cfg_dir, path, dtype)
    if model_type == "sd2-v" and not predicts_v(unet):
        logger.info("%s predicts epsilon; loading it as SD 2.x base (512 px)", path)
        cfg_dir = config_dir("sd2")
        unet = None  # release the first copy before building the second
        unet = _load_component(UNet2DConditionModel, "unet", state_dict, cfg_dir, path, dtype)
    _release(state_dict, "model.", "model_ema.")  # the UNet's source tensors, and the EMA copy no one loads

    # 3. VAE and text encoder(s), from the file or from their own
    parts = parts or {}

    def component(cls: Any, name: str, weights: dict[str, torch.Tensor]) -> Any:
        if name in parts:
            return load_part(name, parts[name], cfg_dir, dtype=dtype, allow_pickle=allow_pickle)
        if name != "vae" and not any(k.startswith(("cond_stage_model.", "conditioner.")) for k in weights):
            raise InputError(
                _absent(path, "second text encoder" if name == "text_encoder_2" else "text encoder", name)
            )
        return _load_component(cls, name, weights, cfg_dir, path, dtype)

    if "vae" in parts:
        _release(state_dict, "first_stage_model.")  # the file's own VAE is replaced: free it first
    vae = component(AutoencoderKL, "vae", state_dict)
    _release(state_dict, "first_stage_model.")
    if (cfg_dir / "text_encoder_2").is_dir():
        return _sdxl_pipeline(path, state_dict, cfg_dir, unet, vae, component)
    text_encoder = component(CLIPTextModel, "text_encoder", state_dict)

    # 4. Tokenizer and scheduler config
    if (cfg_dir / "tokenizer").is_dir():
        tokenizer = CLIPTokenizer.from_pretrained(cfg_dir / "tokenizer", local_files_only=True)
    elif is_open_clip_model(state_dict):
        tokenizer = clip_tokenizer(pad_token=OPEN_CLIP_PAD_TOKEN)
    else:
        tokenizer = clip_tokenizer()
    return Pipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=_scheduler_config(cfg_dir),
        source=str(path),
        name=path.stem,
    )


def _sdxl_pipeline(
    path: Path, state_dict: dict[str, torch.Tensor], cfg_dir: Path, unet: Any, vae: Any, component: Any
) -> Pipeline:
    """The rest of an SDXL file: its text encoders, each read from its own embedder's keys only (in a tiny
    or unusual model both may have one width, where diffusers' detection would take CLIP-L for bigG).
    `component(cls, name, weights)` builds one, from the file or from a part given on its own."""
    refiner = not (cfg_dir / "text_encoder").is_dir()
    embedders = SDXL_REFINER_EMBEDDERS if refiner else SDXL_EMBEDDERS
    encoders: dict[str, Any] = {"text_encoder": None}
    for name, prefix in embedders.items():
        own = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
        cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
        encoders[name] = component(cls, name, own)
        _release(state_dict, prefix)
    index_file = cfg_dir / "model_index.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    return Pipeline(
        unet=unet,
        vae=vae,
        text_encoder=encoders["text_encoder"],
        tokenizer=None if refiner else _config_tokenizer(cfg_dir / "tokenizer", None),
        scheduler_config=_scheduler_config(cfg_dir),
        source=str(path),
        name=path.stem,
        text_encoder_2=encoders["text_encoder_2"],
        tokenizer_2=_config_tokenizer(cfg_dir / "tokenizer_2", OPEN_CLIP_PAD_TOKEN),
        force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", not refiner)),
    )


def _config_tokenizer(folder: Path, pad_token: str | None) -> CLIPTokenizer:
    if folder.is_dir():
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    return clip_tokenizer() if pad_token is None else clip_tokenizer(pad_token=pad_token)


def _scheduler_config(cfg_dir: Path) -> dict[str, Any]:
    return json.loads((cfg_dir / "scheduler" / "scheduler_config.json").read_text())


def _release(state_dict: dict[str, torch.Tensor], *prefixes: str) -> None:
    """Drop a built component's source tensors, so the file's copy does not outlive the model's."""
    for key in [k for k in state_dict if k.startswith(prefixes)]:
        del state_dict[key]


@torch.no_grad()
def predicts_v(unet: UNet2DConditionModel) -> bool:
    """A1111's test (`is_using_v_parameterization_for_sd2`): does this UNet predict v rather than epsilon?

    At t=999 the noisy latent is almost pure noise, so an epsilon model returns roughly its input, while a
    v model returns roughly -x0 and lands far below it; A1111 calls it v when mean(out - x) < -1.
    """
    param = next(unet.parameters())
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, dtype=param.dtype, device=param.device)
    cond = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, dtype=param.dtype, device=param.device)
    out = unet(x, torch.tensor([999], device=param.device), encoder_hidden_states=cond).sample
    return (out - x).float().mean().item() < -1


def _resolve_config(config: str | Path) -> Path:
    if isinstance(config, str) and config in MODEL_TYPES and not Path(config).is_dir():
        return config_dir(config)
    folder = Path(config)
    if not folder.is_dir():
        raise InputError(
            f"config {str(config)!r} is neither a folder nor a shipped config ({', '.join(MODEL_TYPES)})."
        )
    missing = [name for name in _CONFIG_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in _TEXT_CONFIGS):
        missing.append(" or ".join(_TEXT_CONFIGS))
    if missing:
        raise InputError(f"Config folder {folder} lacks {', '.join(missing)}.")
    return folder


def _load_component(
    cls: Any,
    subfolder: str,
    state_dict: dict[str, torch.Tensor],
    cfg_dir: Path,
    path: Path,
    dtype: torch.dtype,
) -> Any:
    what = {
        "unet": "UNet",
        "vae": "VAE",
        "text_encoder": "text encoder",
        "text_encoder_2": "second text encoder",
    }[subfolder]
    where = cfg_dir / subfolder
    with _without_cast_warning():
        try:
            if cls in (CLIPTextModel, CLIPTextModelWithProjection):
                # torch_dtype: without it each weight is cast to the empty model's float32 first. Its final
                # cast fails on weights the file lacks (left on the meta device): caught below, and named.
                model = create_diffusers_clip_model_from_ldm(
                    cls, state_dict, subfolder=subfolder, config=str(cfg_dir), local_files_only=True,
                    torch_dtype=dtype,
                )  # fmt: skip
            else:
                model = cls.from_single_file(
                    state_dict,
                    config=str(cfg_dir),
                    subfolder=subfolder,
                    local_files_only=True,
                    dtype=dtype,  # diffusers >= 0.40 (`torch_dtype` is deprecated)
                )
        except SingleFileComponentError as e:
            raise InputError(_absent(path, what, subfolder)) from e
        except ValueError as e:  # a weight of the wrong shape, or no CLIP model at all
            raise InputError(_does_not_fit(path, what, where, e)) from e
        except (KeyError, RuntimeError, AttributeError, TypeError) as e:
            # diffusers fails on missing weights only at its final cast, and obscurely ("Cannot copy out of
            # meta tensor"), so find out what is missing before blaming the config.
            missing = _missing_weights(cls, subfolder, state_dict, cfg_dir)
            raise InputError(
                _lacks(path, missing, what, where) if missing else _does_not_fit(path, what, where, e)
            ) from e
        # Weights the file lacks stay on the meta device, where they would fail later, far from the cause.
        missing = [name for name, p in model.state_dict().items() if p.is_meta]
        if missing:
            raise InputError(_lacks(path, missing, what, where))
        return model.to(dtype)


def _absent(path: Path, what: str, subfolder: str) -> str:
    if subfolder not in FLAGS:
        return f"Checkpoint {path} has no {what} weights."
    return (
        f"Checkpoint {path} has no {what} weights (saved without them, as ComfyUI and many SDXL fine-tunes are); "
        f"give them with {FLAGS[subfolder]} FILE."
    )


def _does_not_fit(path: Path, what: str, where: Path, error: Exception) -> str:
    # diffusers' first sentence names the weight ("Cannot load  because conv_in.weight expected shape ...")
    reason = " ".join(str(error).split(". ")[0].split()).removeprefix("Cannot load because ").rstrip(".")
    return f"Checkpoint {path} has no {what} that fits the config in {where} ({reason})."


def _lacks(path: Path, missing: list[str], what: str, where: Path) -> str:
    count = len(missing)
    return f"Checkpoint {path} lacks {count} {what} weights for the config in {where} (first: {missing[0]})."


def _missing_weights(
    cls: Any, subfolder: str, state_dict: dict[str, torch.Tensor], cfg_dir: Path
) -> list[str]:
    """The UNet or VAE weights diffusers' key converter finds no value for in `state_dict`."""
    if cls in (CLIPTextModel, CLIPTextModelWithProjection):
        return []  # its loader leaves missing weights on the meta device; `_load_component` reports them
    try:
        config = cls.load_config(cfg_dir, subfolder=subfolder, local_files_only=True)
        with init_empty_weights():
            model = cls.from_config(config)
        convert = SINGLE_FILE_LOADABLE_CLASSES[cls.__name__]["checkpoint_mapping_fn"]
        converted = convert(checkpoint=state_dict, config=config)
    except (ValueError, KeyError, RuntimeError, AttributeError, TypeError):
        return []
    return [name for name in model.state_dict() if converted.get(name) is None]


class _DropCastWarning(logging.Filter):
    # diffusers warns on every `model.to(dtype)` that modules "should be kept in float32: []", even when
    # the list is empty, and from_single_file casts with `to()` itself; the warning says nothing here.
    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32" not in record.getMessage()


@contextmanager
def _without_cast_warning() -> Iterator[None]:
    diffusers_logger = logging.getLogger("diffusers.models.modeling_utils")
    drop = _DropCastWarning()
    diffusers_logger.addFilter(drop)
    try:
        yield
    finally:
        diffusers_logger.removeFilter(drop)
