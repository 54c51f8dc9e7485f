"""Tiny seeded random Stable Diffusion models (diffusers' own test sizes) for fast CPU tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# model hashes are cached on disk (sdlab.loading.hashing): tests use a cache of their own, servers too
os.environ.setdefault("SDLAB_CACHE_DIR", tempfile.mkdtemp(prefix="sdlab-test-cache-"))
# pixel parity with diffusers is asserted in float32: `--dtype auto` would pick bfloat16 on CPUs with native
# bf16 (the machines CI runs on have it); test_dtype_auto checks that choice itself. Subprocesses inherit it.
os.environ.setdefault("SDLAB_DTYPE", "float32")  # SDLAB_DTYPE=bfloat16 pytest: crashes in bf16 show
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from sdlab.loading.tokenizer import OPEN_CLIP_PAD_TOKEN, clip_tokenizer
from sdlab.pipeline import Pipeline

# SD 1.5's noise schedule (its scheduler/scheduler_config.json), the config every sampler is built from.
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def tiny_text_encoder(hidden_act: str = "quick_gelu") -> CLIPTextModel:
    """A 5-layer, 32-wide CLIP text model over the real CLIP vocabulary; "gelu" makes it OpenCLIP-like (SD 2.x)."""
    return CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=49408,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            hidden_act=hidden_act,
        )
    )


def tiny_vae(seed: int = 0, scaling_factor: float = 0.18215) -> AutoencoderKL:
    """A 2-level VAE (factor 2, 4 latent channels), random but seeded."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        scaling_factor=scaling_factor,
    )


def tiny_pipeline(in_channels: int = 4, seed: int = 0, **unet_config) -> Pipeline:
    """A 2-level UNet, VAE (factor 2) and 5-layer CLIP text model of width 32: random but seeded.

    `unet_config` adds UNet options, e.g. time_cond_proj_dim=32 for a guidance-distilled (LCM) UNet.
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        **unet_config,
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = tiny_vae(seed)
    torch.manual_seed(seed)
    text_encoder = tiny_text_encoder()
    for module in (unet, vae, text_encoder):
        module.eval()
    return Pipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        scheduler_config=dict(SD15_SCHEDULER),
        name="tiny",
    )


# SDXL's scheduler config (stable-diffusion-xl-base-1.0's scheduler/scheduler_config.json)
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def tiny_sdxl_pipeline(in_channels: int = 4, seed: int = 0, refiner: bool = False) -> Pipeline:
    """SDXL in miniature, at the sizes of diffusers' own SDXL pipeline tests: a UNet with "text_time"
    conditioning (8-wide size embeddings), a CLIP text model (width 32) and an OpenCLIP-like one with a
    32-wide projection (width 48, so cross-attention is 80 wide; diffusers' single-file loader tells the two
    apart by width), over the real CLIP vocabulary. `refiner` keeps the
    second encoder alone and conditions on an aesthetic score (5 size ids) instead of a target size."""
    torch.manual_seed(seed)
    ids = 5 if refiner else 6
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=ids * 8 + 32,
        cross_attention_dim=48 if refiner else 80,
        norm_num_groups=8,
    )
    vae = tiny_vae(seed, scaling_factor=0.13025)  # SDXL's VAE scale
    torch.manual_seed(seed)
    text_encoder = None if refiner else tiny_text_encoder()
    text_encoder_2 = CLIPTextModelWithProjection(
        CLIPTextConfig(
            hidden_size=48, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5, vocab_size=49408,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=0, hidden_act="gelu", projection_dim=32,
        )
    )  # fmt: skip
    for module in (unet, vae, text_encoder, text_encoder_2):
        if module is not None:
            module.eval()
    return Pipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=None if refiner else clip_tokenizer(),
        scheduler_config=dict(SDXL_SCHEDULER),
        name="tiny-sdxl-refiner" if refiner else "tiny-sdxl",
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(pad_token=OPEN_CLIP_PAD_TOKEN),
        force_zeros_for_empty_prompt=not refiner,
    )


SDLAB_SOURCE = str(Path(__file__).resolve().parents[1] / "src" / "sdlab")


@pytest.fixture(autouse=True, scope="session")
def deprecated_arguments_sdlab_passes_fail():
    """A library's deprecation helper (diffusers' `deprecate`, transformers' `deprecate_kwarg`) warns about
    an argument its caller passed, but points the warning into the library itself, where pyproject's
    filters ("error" only for warnings pointing at sdlab) do not reach. Such a warning raised while the
    nearest caller outside the libraries is sdlab's code fails the test. (Tests may call diffusers as
    the oracle with old-style inputs on purpose.)"""
    import sys
    import warnings

    original = warnings.warn

    def warn(message, category=None, stacklevel=1, source=None, **kwargs):
        kind = category or (type(message) if isinstance(message, Warning) else UserWarning)
        helper = sys._getframe(1).f_code.co_filename
        if issubclass(kind, DeprecationWarning | FutureWarning) and "deprecat" in Path(helper).name:
            frame = sys._getframe(1)
            while frame is not None and ("site-packages" in frame.f_code.co_filename
                                         or frame.f_code.co_filename.startswith(sys.base_prefix)):  # fmt: skip
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(SDLAB_SOURCE):
                raise kind(f"{message} (a deprecated call in {frame.f_code.co_filename}:{frame.f_lineno})")
        return original(message, category, stacklevel + 1, source, **kwargs)

    warnings.warn = warn
    yield
    warnings.warn = original


@pytest.fixture(scope="session")
def tiny() -> Pipeline:
    return tiny_pipeline()


@pytest.fixture(scope="session")
def tiny_inpaint() -> Pipeline:
    return tiny_pipeline(in_channels=9, seed=1)


@pytest.fixture(scope="session")
def tiny_sdxl() -> Pipeline:
    return tiny_sdxl_pipeline()


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory, tiny_sdxl) -> Path:
    from sdlab.loading.folder import save_folder

    return save_folder(tiny_sdxl, tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny) -> Path:
    """The tiny model saved as a diffusers-format folder."""
    from sdlab.loading.folder import save_folder

    return save_folder(tiny, tmp_path_factory.mktemp("models") / "tiny")


def make_lora(pipe: Pipeline, path: Path, seed: int = 0, rank: int = 4) -> Path:
    """A LoRA file for `pipe`'s UNet with random (non-zero) weights, as diffusers' scripts save one."""
    import copy

    from peft import LoraConfig

    from sdlab.lora import UNET_TARGETS, save_lora

    torch.manual_seed(seed)
    unet = copy.deepcopy(pipe.unet)
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=UNET_TARGETS, init_lora_weights=False)
    )
    adapted = copy.copy(pipe)
    adapted.unet = unet
    saved = save_lora(path.parent / f".{path.stem}", adapted)
    path.parent.mkdir(parents=True, exist_ok=True)
    saved.rename(path)
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, tiny, tiny_dir, tiny_sdxl_dir) -> Path:
    """An AUTOMATIC1111 data folder: the tiny model and the tiny SDXL (tiny-xl) in models/Stable-diffusion,
    a LoRA in models/Lora."""
    import shutil

    root = tmp_path_factory.mktemp("a1111")
    shutil.copytree(tiny_dir, root / "models" / "Stable-diffusion" / "tiny")
    shutil.copytree(tiny_sdxl_dir, root / "models" / "Stable-diffusion" / "tiny-xl")
    make_lora(tiny, root / "models" / "Lora" / "style.safetensors")
    return root


@pytest.fixture(scope="session")
def server(data_dir):
    """A real `sdlab serve` on a free loopback port, over `data_dir` (plus the digits model)."""
    from server_utils import serve

    with serve("--data-dir", str(data_dir), "--checkpoints-limit", "2") as url:
        yield url


@pytest.fixture(scope="session")
def squares_dir(tmp_path_factory):
    """Eight 32x32 pictures of a bright square on dark ground, captioned (the teaching recipes' data)."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for i in range(8):
        pixels = np.full((32, 32, 3), 20, np.uint8)
        x, y = rng.integers(4, 16, 2)
        pixels[y : y + 12, x : x + 12] = 230
        Image.fromarray(pixels).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("a bright square")
    return folder
