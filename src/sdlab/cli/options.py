"""Command options as dataclasses; argparse flags are generated from them, one-to-one.

Field names are diffusers' argument names; flags are the same names in kebab-case, plus the short
aliases users expect (`--steps` for `--num-inference-steps`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sdlab.evaluation.seeds import HELD_OUT_SEED
from sdlab.options import add_options, from_namespace, option, same_as
from sdlab.sampling.params import SamplingParams
from sdlab.service.request import GenerationRequest

__all__ = ["add_options", "from_namespace", "option"]


@dataclass(frozen=True)
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
    vae: str | None = option(
        None, "a VAE file (A1111's models/VAE, e.g. the SDXL fp16-fix VAE) or diffusers vae/ folder, in place of "
        "the model's own or where its checkpoint has none", "--vae-path", metavar="FILE",
    )  # fmt: skip
    text_encoder: str | None = option(
        None, "a text encoder file (ComfyUI's models/clip, e.g. clip_l.safetensors) where the checkpoint has none",
        metavar="FILE",
    )  # fmt: skip
    text_encoder_2: str | None = option(
        None, "SDXL's second text encoder file (ComfyUI's clip_g.safetensors) where the checkpoint has none",
        metavar="FILE",
    )  # fmt: skip


@dataclass(frozen=True)
class NetworkOptions(ModelOptions):
    compile: bool = option(
        False, "compile the UNet and VAE decoder with torch.compile (CUDA graphs too on a GPU): the first call "
        "of each size compiles (minutes on a CPU), later ones run faster",
    )  # fmt: skip
    lora_dir: str | None = option(
        None, "folder of LoRAs that prompts name as <lora:NAME:WEIGHT> (A1111's models/Lora)", metavar="DIR"
    )
    embeddings_dir: str | None = option(
        None,
        "folder of embeddings, applied when a prompt says their name (A1111's embeddings)",
        metavar="DIR",
    )


@dataclass(frozen=True)
class GenerateOptions(GenerationRequest, NetworkOptions):
    """`sdlab generate`: a flag for every field of a `GenerationRequest` (its help is written there, on
    `SamplingParams` and `GenerationRequest`), plus the command line's own files and folders."""

    prompt: str | None = option(
        None, "what to draw; (word:1.3) emphasis, [word] de-emphasis, BREAK (\"\" for none)", positional=True,
        nargs="?",
    )  # fmt: skip
    model: str | None = option(
        None, "diffusers folder or single-file .safetensors checkpoint (default: the shipped digits model)"
    )
    from_file: str | None = option(
        None,
        "a prompt per line, or A1111 prompts-from-file options (--prompt ... --steps 8 --seed 3); writes "
        "OUT-K.png for image K of the file; under accelerate launch the lines are split across processes",
        metavar="FILE",
    )
    embedding: str | None = option(
        None, "textual-inversion embedding(s) to load (diffusers or A1111 format), comma-separated"
    )
    lora: str | None = option(None, "LoRA file(s) to apply, FILE[:WEIGHT], comma-separated")
    output: str | None = option(
        None,
        "image to write: .png (with sdlab's recipe), or .jpg/.webp (A1111's EXIF parameters); several images add "
        "-0, -1, ... and -grid (default: outputs/NNNNN.png)",
        "-o",
    )


@dataclass(frozen=True)
class ReplayOptions(NetworkOptions):
    image: str = option("", "a PNG made by sdlab (or carrying A1111 'parameters')", positional=True)
    output: str | None = option(
        None, "where to write the regenerated image (default: IMAGE-replay.png)", "-o"
    )


@dataclass(frozen=True)
class ConvertOptions(ModelOptions):
    model: str | None = option(None, "the model to convert (diffusers folder or checkpoint)", positional=True)
    output: str = option(
        "", "a .safetensors file (A1111 layout) or a folder (diffusers layout)", positional=True
    )
    half: bool = option(False, "store float16 weights (half the size)")


@dataclass(frozen=True)
class EvalOptions(ModelOptions):
    per_digit: int = option(50, "images generated per digit for accuracy, FID and diversity")
    seed: int = option(
        HELD_OUT_SEED, "seed of the first image (image i has seed + i); the default, the held-out seeds, is where "
        "settings are reported, and sweeps choose settings on seeds from 0",
    )  # fmt: skip
    scheduler: str | None = same_as(SamplingParams, "scheduler")
    timestep_spacing: str | None = same_as(SamplingParams, "timestep_spacing")
    sigma_schedule: str | None = same_as(SamplingParams, "sigma_schedule")
    num_inference_steps: int | None = same_as(SamplingParams, "num_inference_steps")
    guidance_scale: float | None = same_as(SamplingParams, "guidance_scale")
    guidance_interval: tuple[float, float | None] | None = same_as(SamplingParams, "guidance_interval")
    deep_cache: int | None = same_as(SamplingParams, "deep_cache")
    vae_decoder: str | None = same_as(GenerationRequest, "vae_decoder")
    compile: bool = same_as(NetworkOptions, "compile")
    sweep: str | None = option(
        None,
        "also run sweeps, comma-separated: guidance, strength, schedulers, guide, fast, fast-wide, or all",
    )
    sweep_per_digit: int = option(20, "images per digit at each point of a sweep")
    output: str = option("eval", "folder for eval.json, eval.md and the sweeps' .json/.md/.png", "-o")


@dataclass(frozen=True)
class CaptionOptions:
    folder: str = option("", "folder of images to caption", positional=True)
    captioner: str = option("digits", "digits (sdlab's digits captioner) or blip:PATH (a local BLIP folder)")
    sidecars: bool = option(False, "also write a .txt caption beside each image (kohya style)")
    overwrite: bool = option(False, "replace an existing metadata.jsonl")
    allow_pickle: bool = option(False, "allow a BLIP folder with pickle weights (loaded with weights_only)")


@dataclass(frozen=True)
class MakeDigitsOptions:
    """`sdlab make-digits`: a captioned folder of training digits, the data the teaching recipes start from."""

    folder: str = option("", "new folder to write the PNGs and metadata.jsonl into", positional=True)
    count: int = option(200, "how many digits (1 to 4,000; 1 to 400 with --digit)")
    digit: int | None = option(None, "only this digit, 0-9 (default: every digit, in a random order)")
    look: str = option(
        "plain", "plain, underline (a line under each digit), italic (leaning right), wide (stretched "
        "sideways) or tiny (half size)",
    )  # fmt: skip
    token: str = option("", 'caption every image "a TOKEN handwritten digit D" (for textual inversion)')
    captions: bool = option(True, "write metadata.jsonl with the digits captioner's captions")
    seed: int = option(0, "which digits are drawn, and in what order")


@dataclass(frozen=True)
class ServeOptions:
    """`sdlab serve`: flags named as AUTOMATIC1111 names them (--port, --listen, --api-auth, --*-dir)."""

    port: int = option(7860, "TCP port (7860 is A1111's too)")
    listen: bool = option(False, "listen on every network interface, not only 127.0.0.1 (needs --api-auth)")
    api_auth: str | None = option(
        None, "USER:PASSWORD[,USER:PASSWORD]: HTTP Basic credentials for every request (or SDLAB_API_AUTH)"
    )
    data_dir: str | None = option(
        None,
        "an A1111 folder: models/Stable-diffusion, models/Lora, models/ESRGAN and embeddings inside it",
        metavar="DIR",
    )
    ckpt_dir: str | None = option(
        None, "folder(s) of checkpoints and diffusers models, comma-separated", metavar="DIR"
    )
    lora_dir: str | None = option(None, "folder(s) of LoRAs, comma-separated", metavar="DIR")
    embeddings_dir: str | None = option(
        None, "folder(s) of textual-inversion embeddings, comma-separated", metavar="DIR"
    )
    upscaler_dir: str | None = option(
        None, "folder(s) of ESRGAN-family upscaler models for the hires fix (A1111's models/ESRGAN; needs spandrel)",
        "--esrgan-models-path", metavar="DIR",
    )  # fmt: skip
    checkpoints_limit: int = option(1, "models kept in memory at once (A1111's sd_checkpoints_limit)")
    checkpoints_memory_gb: float | None = option(
        None, "most GB of model weights kept in memory; the least recently used go first (default: 70%% of the "
        "GPU's memory, or of the RAM)", metavar="GB",
    )  # fmt: skip
    queue_size: int = option(16, "requests that may wait behind the running one; more get HTTP 503")
    max_body_mb: float = option(32.0, "largest request body, MiB (base64 images included)")
    # what one request may cost (`sdlab.service.limits`); left out: the device's default; 0: no limit
    max_pixels: int | None = option(
        None, "most pixels (width x height) of one image, the hires fix's final size too (default: 1048576 on "
        "a CPU, from the GPU's memory on a GPU; 0: no limit)", metavar="N",
    )  # fmt: skip
    max_steps: int | None = option(
        None, "most denoising steps of one pass (default 150; 0: no limit)", metavar="N"
    )
    max_prompt_tokens: int | None = option(
        None, "most tokens of one prompt, counted in 75-token chunks (default 600 on a CPU, 2400 on a GPU; 0: no "
        "limit)", metavar="N",
    )  # fmt: skip
    max_work: float | None = option(
        None, "most work of one request: megapixels x steps x images x UNet evaluations per step (default 64 on a "
        "CPU, about 20 minutes of SD 1.5 on 2 cores; none on a GPU; 0: no limit)", metavar="X",
    )  # fmt: skip
    request_timeout: float | None = option(
        None, "seconds a request may run before it is stopped, within one UNet or VAE block (default 600; 0: no "
        "limit)", metavar="S",
    )  # fmt: skip
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
    vae_path: str | None = option(
        None, "a VAE file or diffusers vae/ folder every model decodes with, in place of its own (A1111's "
        "--vae-path), e.g. the SDXL fp16-fix VAE", "--vae", metavar="FILE",
    )  # fmt: skip
    allow_pickle: bool = option(False, "also list .ckpt/.pt/.bin files, loaded with weights_only")
    compile: bool = option(
        False, "compile each model's UNet and VAE decoder when it loads (torch.compile; CUDA graphs on a "
        "GPU); also the sdlab_compile option of /sdapi/v1/options",
    )  # fmt: skip


@dataclass(frozen=True)
class InfoOptions(ModelOptions):
    model: str | None = option(
        None, "diffusers folder or single-file .safetensors checkpoint (default: digits, the shipped model)",
        positional=True, nargs="?",
    )  # fmt: skip
    json: bool = option(False, "print machine-readable JSON")
