"""A tiny latent decoder beside the full VAE: diffusers' `AutoencoderTiny` (TAESD, Bohan Ollin Boer 2023).

TAESD decodes SD's scaled latents directly (its `scaling_factor` is 1) at a fraction of the full VAE's
cost, with a small loss of detail. sdlab uses it only to *decode*: for a generation's final image when
asked (`--vae-decoder PATH`, or `--vae-decoder tiny` for the model folder's own `vae_tiny/`, which
`sdlab distill-decoder` makes and the digits model ships), and for the server's live previews. Encoding (image-to-image,
inpainting) always uses the model's own VAE.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderTiny

from sdlab.errors import InputError

TINY = "tiny"  # `--vae-decoder tiny`: the model folder's own tiny decoder
TINY_FOLDER = "vae_tiny"  # where a model folder keeps it (`sdlab distill-decoder` writes one)


def vae_decoder_folder(ref: str | Path, model_source: str | Path) -> Path:
    """The folder `ref` names: a path, or `tiny` for the model's own (`MODEL/vae_tiny`, beside its `vae`).

    Raises `InputError` for `tiny` when the model (`model_source`, the path it was loaded from) has none."""
    if str(ref) != TINY:
        return Path(ref).expanduser()
    folder = Path(model_source) / TINY_FOLDER
    if not (folder / "config.json").is_file():
        raise InputError(
            f"--vae-decoder tiny: the model {model_source} has no tiny decoder (no {TINY_FOLDER}/ folder); "
            "make one with `sdlab distill-decoder`, or give a TAESD folder"
        )
    return folder


def load_vae_decoder(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> AutoencoderTiny:
    """An `AutoencoderTiny` from a local diffusers folder (config.json + safetensors weights).

    Raises `InputError` for a missing folder, pickle-only weights or a config of another class."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise InputError(
            f"--vae-decoder {path}: not a diffusers folder (no config.json); give a TAESD folder"
        )
    if not any(folder.glob("*.safetensors")):
        raise InputError(f"--vae-decoder {path}: no .safetensors weights (pickle files are not loaded)")
    try:
        decoder = AutoencoderTiny.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"--vae-decoder {path}: cannot load an AutoencoderTiny ({first})") from None
    return decoder.to(device=device, dtype=dtype).eval()


def check_decoder_fits(decoder: AutoencoderTiny, latent_channels: int, factor: int, path: str) -> None:
    """Raise `InputError` unless `decoder` reads the model's latents (channels) at its VAE's factor."""
    ours = decoder.config.upsampling_scaling_factor ** (len(decoder.config.decoder_block_out_channels) - 1)
    if decoder.config.latent_channels != latent_channels or ours != factor:
        raise InputError(
            f"--vae-decoder {path} decodes {decoder.config.latent_channels}-channel latents {ours}x up; this model's "
            f"VAE has {latent_channels} channels and factor {factor}"
        )
