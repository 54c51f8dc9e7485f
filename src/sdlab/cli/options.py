"""Command options as dataclasses; argparse flags are generated from them, one-to-one.

Field names are diffusers' argument names; flags are the same names in kebab-case, plus the short
aliases users expect (`--steps` for `--num-inference-steps`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sdlab.options import add_options, from_namespace, option
from sdlab.sampling.schedulers import SCHEDULERS

__all__ = ["add_options", "from_namespace", "option"]


@dataclass
class ModelOptions:
    model: str | None = option(
        None, "diffusers folder or single-file .safetensors checkpoint (default: the shipped digits model)"
    )
    device: str = option("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    dtype: str = option(
        "auto",
        "auto (float16 on CUDA, bfloat16 on CPUs with AVX512-BF16 or AMX, else float32; or $SDLAB_DTYPE), "
        "float32, float16 or bfloat16",
    )
    allow_pickle: bool = option(False, "allow pickle checkpoints (.ckpt/.pt/.bin), loaded with weights_only")
    config: str | None = option(
        None, "diffusers config folder describing a non-standard single-file checkpoint"
    )


@dataclass
class NetworkOptions(ModelOptions):
    lora_dir: str | None = option(
        None, "folder of LoRAs that prompts name as <lora:NAME:WEIGHT> (A1111's models/Lora)", metavar="DIR"
    )
    embeddings_dir: str | None = option(
        None,
        "folder of embeddings, applied when a prompt says their name (A1111's embeddings)",
        metavar="DIR",
    )


@dataclass
class GenerateOptions(NetworkOptions):
    prompt: str | None = option(
        None, "what to draw; (word:1.3) emphasis, [word] de-emphasis, BREAK (\"\" for none)", positional=True,
        nargs="?",
    )  # fmt: skip
    negative_prompt: str | None = option(
        None, "what to steer away from: replaces the empty prompt in guidance"
    )
    scheduler: str | None = option(
        None, "sampler (default: the model's own)", choices=list(SCHEDULERS), metavar="NAME"
    )
    num_inference_steps: int | None = option(
        None, "denoising steps (default: the model's, else 30)", "--steps"
    )
    guidance_scale: float | None = option(
        None,
        "classifier-free guidance scale; <= 1 means no guidance (default: the model's, else 7.5)",
        "--cfg",
    )
    guidance_rescale: float = option(0.0, "rescale guided noise towards the conditional one's std (0-1)")
    guidance_interval: str | None = option(
        None,
        "LO,HI: guide only at noise levels sigma in (LO, HI], one UNet pass at the other steps "
        "(Kynkaanniemi et al. 2024); 'all': every step (default: the model's, else all)",
        metavar="LO,HI",
    )
    seed: int | None = option(None, "seed of the first image; image i uses seed + i (default: random)")
    height: int | None = option(None, "image height in pixels (default: the model's, or the init image's)")
    width: int | None = option(None, "image width in pixels (default: the model's, or the init image's)")
    num_images_per_prompt: int = option(1, "images to generate", "--num-images", "-n")
    init_image: str | None = option(None, "start from this image (image-to-image)")
    strength: float | None = option(
        None, "how much of the init image to re-noise, (0, 1] (default 0.8; inpaint 1.0)"
    )
    mask_image: str | None = option(
        None, "inpainting mask, white = repaint, same size as the init image", "--mask"
    )
    mask_blur: float = option(
        0.0, "blur the mask by this Gaussian radius in pixels first (A1111's mask blur)"
    )
    invert_mask: bool = option(False, "repaint the black part of the mask instead of the white")
    eta: float = option(0.0, "DDIM's eta: 0 is deterministic, 1 is DDPM-like")
    deep_cache: int | None = option(
        None, "N: run the UNet whole every N steps and only its shallow path in between, reusing its deep "
        "features (DeepCache); 1: off (default: the model's recommendation, else off)", metavar="N",
    )  # fmt: skip
    vae_decoder: str | None = option(
        None,
        "decode the final latents with a tiny decoder: 'tiny' (the model's own, e.g. the digits model's) "
        "or a diffusers AutoencoderTiny/TAESD folder",
        metavar="tiny|DIR",
    )
    from_file: str | None = option(
        None,
        "a prompt per line, or A1111 prompts-from-file options (--prompt ... --steps 8 --seed 3); writes "
        "OUT-K.png for image K of the file; under accelerate launch the lines are split across processes",
        metavar="FILE",
    )
    guide_digit: int | None = option(
        None, "steer towards this digit with the digit classifier's gradient (works with an empty prompt)"
    )
    guide_scale: float = option(8.0, "step size of --guide-digit along the classifier's gradient")
    embedding: str | None = option(
        None, "textual-inversion embedding(s) to load (diffusers or A1111 format), comma-separated"
    )
    lora: str | None = option(None, "LoRA file(s) to apply, FILE[:WEIGHT], comma-separated")
    output: str | None = option(
        None, "PNG to write; several images add -0, -1, ... and -grid (default: outputs/NNNNN.png)", "-o"
    )


@dataclass
class ReplayOptions(NetworkOptions):
    image: str = option("", "a PNG made by sdlab (or carrying A1111 'parameters')", positional=True)
    output: str | None = option(
        None, "where to write the regenerated image (default: IMAGE-replay.png)", "-o"
    )


@dataclass
class ConvertOptions(ModelOptions):
    model: str | None = option(None, "the model to convert (diffusers folder or checkpoint)", positional=True)
    output: str = option(
        "", "a .safetensors file (A1111 layout) or a folder (diffusers layout)", positional=True
    )
    half: bool = option(False, "store float16 weights (half the size)")


@dataclass
class EvalOptions(ModelOptions):
    per_digit: int = option(50, "images generated per digit for accuracy, FID and diversity")
    scheduler: str | None = option(
        None, "sampler (default: the model's own)", choices=list(SCHEDULERS), metavar="NAME"
    )
    num_inference_steps: int | None = option(
        None, "denoising steps (default: the model's, else 30)", "--steps"
    )
    guidance_scale: float | None = option(
        None, "classifier-free guidance scale (default: the model's, else 7.5)", "--cfg"
    )
    guidance_interval: str | None = option(
        None,
        "LO,HI: guide only at noise levels sigma in (LO, HI]; 'all': every step (default: the model's)",
        metavar="LO,HI",
    )
    deep_cache: int | None = option(
        None, "N: the UNet runs whole every N steps (DeepCache); 1: off (default: the model's)", metavar="N"
    )
    vae_decoder: str | None = option(
        None, "decode with a tiny decoder: 'tiny' (the model's own) or a TAESD folder", metavar="tiny|DIR"
    )
    sweep: str | None = option(
        None, "also run sweeps, comma-separated: guidance, strength, schedulers, guide, fast, or all"
    )
    sweep_per_digit: int = option(20, "images per digit at each point of a sweep")
    output: str = option("eval", "folder for eval.json, eval.md and the sweeps' .json/.md/.png", "-o")


@dataclass
class CaptionOptions:
    folder: str = option("", "folder of images to caption", positional=True)
    captioner: str = option("digits", "digits (sdlab's digits captioner) or blip:PATH (a local BLIP folder)")
    sidecars: bool = option(False, "also write a .txt caption beside each image (kohya style)")
    overwrite: bool = option(False, "replace an existing metadata.jsonl")
    allow_pickle: bool = option(False, "allow a BLIP folder with pickle weights (loaded with weights_only)")


@dataclass
class ServeOptions:
    """`sdlab serve`: flags named as AUTOMATIC1111 names them (--port, --listen, --api-auth, --*-dir)."""

    port: int = option(7860, "TCP port (7860 is A1111's too)")
    listen: bool = option(False, "listen on every network interface, not only 127.0.0.1 (needs --api-auth)")
    api_auth: str | None = option(
        None, "USER:PASSWORD[,USER:PASSWORD]: HTTP Basic credentials for every request (or SDLAB_API_AUTH)"
    )
    data_dir: str | None = option(
        None, "an A1111 folder: models/Stable-diffusion, models/Lora and embeddings inside it", metavar="DIR"
    )
    ckpt_dir: str | None = option(
        None, "folder(s) of checkpoints and diffusers models, comma-separated", metavar="DIR"
    )
    lora_dir: str | None = option(None, "folder(s) of LoRAs, comma-separated", metavar="DIR")
    embeddings_dir: str | None = option(
        None, "folder(s) of textual-inversion embeddings, comma-separated", metavar="DIR"
    )
    checkpoints_limit: int = option(1, "models kept in memory at once (A1111's sd_checkpoints_limit)")
    queue_size: int = option(16, "requests that may wait behind the running one; more get HTTP 503")
    max_body_mb: float = option(32.0, "largest request body, MiB (base64 images included)")
    vae_decoder: str | None = option(
        None, "a tiny decoder for the live previews: 'tiny' (each model's own, where it has one) or a "
        "TAESD folder (diffusers AutoencoderTiny)", metavar="tiny|DIR",
    )  # fmt: skip
    allowed_hosts: str | None = option(
        None, "more host names the Host header may carry (e.g. a reverse proxy's), comma-separated"
    )
    cors_allow_origins: str | None = option(
        None, "web origins allowed to call the API from a browser, comma-separated (A1111's flag)"
    )
    device: str = option("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    dtype: str = option(
        "auto",
        "auto (float16 on CUDA, bfloat16 on CPUs with AVX512-BF16 or AMX, else float32; or $SDLAB_DTYPE), "
        "float32, float16 or bfloat16",
    )
    allow_pickle: bool = option(False, "also list .ckpt/.pt/.bin files, loaded with weights_only")


@dataclass
class InfoOptions(ModelOptions):
    model: str | None = option(
        None, "diffusers folder or single-file .safetensors checkpoint (default: digits, the shipped model)",
        positional=True, nargs="?",
    )  # fmt: skip
    json: bool = option(False, "print machine-readable JSON")
