"""Command options as dataclasses; argparse flags are generated from them, one-to-one.

Field names are diffusers' argument names; flags are the same names in kebab-case, plus the short
aliases users expect (`--steps` for `--num-inference-steps`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from sdlab.sampling.schedulers import SCHEDULERS

METAVARS = {int: "N", float: "X", str: "TEXT"}
PATHS = {
    "model",
    "config",
    "init_image",
    "mask_image",
    "output",
    "image",
    "embedding",
    "lora",
    "folder",
    "data",
}


def option(default: Any, help: str, *aliases: str, positional: bool = False, **argparse_kwargs: Any) -> Any:
    meta = {"help": help, "aliases": aliases, "positional": positional, **argparse_kwargs}
    return field(default=default, metadata=meta)


@dataclass
class ModelOptions:
    model: str | None = option(
        None, "diffusers folder or single-file .safetensors checkpoint (default: the shipped digits model)"
    )
    device: str = option("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "auto (float16 on CUDA, else float32), float32, float16 or bfloat16")
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
    prompt: str = option("", "what to draw; (word:1.3) emphasis, [word] de-emphasis, BREAK", positional=True)
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
class TrainBaseOptions:
    preset: str = option(
        "quick",
        "quick (under 20 min on 2 CPU cores), full (the shipped model) or tiny (seconds)",
        choices=["quick", "full", "tiny"],
        metavar="NAME",
    )
    run_dir: str = option(
        "runs/digits", "folder for stages, checkpoints, loss logs and validation grids", metavar="PATH"
    )
    output: str | None = option(
        None, "where to write the final diffusers model (default: RUN_DIR/model)", "-o", metavar="PATH"
    )
    data: str | None = option(
        None,
        "train on this folder of captioned images (metadata.jsonl or .txt sidecars) instead of the MNIST digits",
        metavar="DIR",
    )
    seed: int | None = option(None, "random seed (default: the preset's)")
    vae_steps: int | None = option(None, "VAE training steps (default: the preset's)")
    text_pretrain_steps: int | None = option(
        None,
        "CLIP-style contrastive pretraining steps of the text encoder, 0 for none (default: the preset's)",
    )
    unet_steps: int | None = option(None, "UNet + text encoder training steps (default: the preset's)")
    batch_size: int | None = option(None, "batch size per process (default: the preset's)")
    mixed_precision: str | None = option(None, "no, fp16 or bf16 (accelerate's mixed precision)")
    resume: bool = option(False, "continue from the latest complete checkpoint in RUN_DIR")


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
    sweep: str | None = option(
        None, "also run sweeps, comma-separated: guidance, strength, schedulers, guide, or all"
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
class TeachOptions:
    """Options every teaching recipe shares (see sdlab.training.recipe.RecipeConfig)."""

    data: str = option(
        "", "folder of training images (captions: metadata.jsonl or .txt sidecars)", positional=True
    )
    output: str = option(
        "",
        "run folder: checkpoints/, loss.csv, validation/ and the result",
        "-o",
        metavar="DIR",
        required=True,
    )
    model: str | None = option(
        None, "base model: diffusers folder or .safetensors (default: the digits model)"
    )
    steps: int = option(500, "optimizer steps")
    batch_size: int = option(8, "global batch size (split across processes)")
    learning_rate: float = option(1e-4, "AdamW learning rate", "--lr")
    lr_scheduler: str = option("constant", "constant, cosine, linear, constant_with_warmup, ...")
    warmup_steps: int = option(0, "learning-rate warm-up steps")
    seed: int = option(0, "seed of the batch order, noise and timesteps")
    checkpoint_every: int = option(100, "save a resumable checkpoint every N steps")
    keep_checkpoints: int = option(2, "complete checkpoints to keep")
    validate_every: int = option(0, "save a validation grid every N steps (0: at the end only)")
    validation_prompt: str | None = option(None, "validation prompts, separated by |")
    caption_dropout: float = option(0.0, "share of empty captions")
    snr_gamma: float | None = option(None, "min-SNR loss weighting gamma (e.g. 5)")
    no_cache_latents: bool = option(False, "encode every batch with the VAE instead of once up front")
    mixed_precision: str = option("no", "no, fp16 or bf16 (accelerate's mixed precision)")
    resume: str | None = option(
        None, "latest, or a checkpoint folder to continue from", metavar="latest|PATH"
    )
    allow_pickle: bool = option(False, "allow a pickle base model (loaded with weights_only)")


@dataclass
class FinetuneOptions(TeachOptions):
    train_text_encoder: bool = option(False, "train the text encoder too")
    ema_decay: float = option(0.999, "EMA decay of the saved weights (0: no EMA)")
    half: bool = option(False, "store the result's weights in float16")


@dataclass
class LoraOptions(TeachOptions):
    rank: int = option(4, "LoRA rank")
    train_text_encoder: bool = option(False, "also put adapters on the text encoder")
    learning_rate: float = option(1e-3, "AdamW learning rate", "--lr")


@dataclass
class TextualInversionOptions(TeachOptions):
    token: str = option("", "the new word, e.g. <tiny>", required=True)
    initializer_token: str = option("", "an existing single-token word to start from (default: small noise)")
    num_vectors: int = option(1, "vectors (tokens) the new word is made of")
    prompts: str = option(
        "object",
        "object or style templates, or caption: each image's caption, the token appended unless it names it",
        choices=["object", "style", "caption"],
    )
    a1111: bool = option(False, "also write the embedding in A1111's format")
    learning_rate: float = option(5e-3, "AdamW learning rate", "--lr")


@dataclass
class DreamBoothOptions(TeachOptions):
    instance_prompt: str = option("", "the prompt of every instance image, e.g. 'a sks digit'", required=True)
    class_prompt: str = option("", "the subject's class, e.g. 'a handwritten digit' (for prior preservation)")
    prior_preservation: bool = option(False, "add the loss on class images the base model generates")
    num_class_images: int = option(100, "class images to generate (reused from --class-dir when present)")
    prior_loss_weight: float = option(1.0, "weight W of the prior loss")
    class_dir: str | None = option(
        None, "folder of class images (default: OUTPUT/class_images)", metavar="DIR"
    )
    train_text_encoder: bool = option(False, "train the text encoder too")
    lora: bool = option(False, "train LoRA adapters instead of the full UNet")
    rank: int = option(4, "LoRA rank (with --lora)")
    learning_rate: float = option(5e-5, "AdamW learning rate", "--lr")


@dataclass
class ServeOptions:
    """`sdlab serve`: flags named as AUTOMATIC1111 names them (--port, --listen, --api-auth, --*-dir)."""

    port: int = option(7860, "TCP port (A1111's default)")
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
    allowed_hosts: str | None = option(
        None, "more host names the Host header may carry (e.g. a reverse proxy's), comma-separated"
    )
    cors_allow_origins: str | None = option(
        None, "web origins allowed to call the API from a browser, comma-separated (A1111's flag)"
    )
    device: str = option("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "auto (float16 on CUDA, else float32), float32, float16 or bfloat16")
    allow_pickle: bool = option(False, "also list .ckpt/.pt/.bin files, loaded with weights_only")


@dataclass
class InfoOptions(ModelOptions):
    model: str | None = option(
        None, "diffusers folder or single-file .safetensors checkpoint", positional=True
    )
    json: bool = option(False, "print machine-readable JSON")


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one argument per dataclass field of `cls`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        aliases, positional = meta.pop("aliases"), meta.pop("positional")
        kind = _base_type(hints[f.name])
        if positional:
            parser.add_argument(f.name, type=kind, help=meta.pop("help"), **meta)
            continue
        flags = ["--" + f.name.replace("_", "-"), *aliases]
        if kind is bool:
            parser.add_argument(*flags, dest=f.name, action="store_true", help=meta.pop("help"))
        else:
            parser.add_argument(
                *flags,
                dest=f.name,
                type=kind,
                default=f.default,
                **{"metavar": "PATH" if f.name in PATHS else METAVARS.get(kind, "VALUE"), **meta},
            )


def from_namespace(cls: type, ns: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})


def _base_type(hint: Any) -> type:
    """`int | None` -> int."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint
