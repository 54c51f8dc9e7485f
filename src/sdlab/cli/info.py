"""`sdlab info MODEL`: what a model is made of; `sdlab convert MODEL OUTPUT`: the same model in another format."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sdlab.cli.generate import load_model
from sdlab.cli.options import ConvertOptions, InfoOptions
from sdlab.errors import InputError
from sdlab.loading.decoder import TINY_FOLDER
from sdlab.pipeline import Pipeline
from sdlab.sampling.schedulers import scheduler_name_from_config

FAMILY_NAMES = {
    "sd1": "SD 1.x (one CLIP text encoder)",
    "sd2": "SD 2.x (one OpenCLIP text encoder)",
    "sdxl": "SDXL (CLIP and OpenCLIP bigG text encoders; size conditioning)",
    "sdxl-refiner": "SDXL refiner (OpenCLIP bigG text encoder; aesthetic-score conditioning)",
}


def describe(pipe: Pipeline) -> dict:
    """What `sdlab info` prints: the family, sizes, scheduler, recommendation and each component's shape."""

    def params(module) -> int:
        return sum(p.numel() for p in module.parameters())

    def text_encoder(tokenizer, encoder) -> dict:
        return {
            "parameters": params(encoder),
            "hidden_size": encoder.config.hidden_size,
            "layers": encoder.config.num_hidden_layers,
            "vocab_size": len(tokenizer),
            "max_length": tokenizer.model_max_length,
        }

    unet, vae = pipe.unet.config, pipe.vae.config
    encoders = {}
    if pipe.text_encoder is not None:
        encoders["text_encoder"] = text_encoder(pipe.tokenizer, pipe.text_encoder)
    if pipe.text_encoder_2 is not None:  # SDXL's OpenCLIP bigG, with its pooled projection
        encoders["text_encoder_2"] = {
            **text_encoder(pipe.tokenizer_2, pipe.text_encoder_2),
            "projection_dim": pipe.text_encoder_2.config.projection_dim,
        }
    return {
        "model": pipe.source,
        "family": pipe.family,  # sd1, sd2, sdxl or sdxl-refiner
        "model_hash": pipe.model_hash(),
        "resolution": pipe.default_size,
        "latent_shape": [vae.latent_channels, unet.sample_size, unet.sample_size],
        "vae_scale_factor": pipe.vae_scale_factor,
        "inpainting_unet": pipe.is_inpainting_unet,
        "prediction_type": pipe.scheduler_config.get("prediction_type", "epsilon"),
        "scheduler": scheduler_name_from_config(pipe.scheduler_config),
        "recommended_sampling": pipe.recommended.to_json(),  # sdlab.json: applied where a call gives none
        "dtype": str(pipe.dtype).removeprefix("torch."),
        # the model folder's own tiny decoder, if it has one (`--vae-decoder tiny`)
        "tiny_decoder": TINY_FOLDER if pipe.source and (Path(pipe.source) / TINY_FOLDER).is_dir() else None,
        "unet": {
            "parameters": params(pipe.unet),
            "block_out_channels": list(unet.block_out_channels),
            "down_block_types": list(unet.down_block_types),
            "cross_attention_dim": unet.cross_attention_dim,
        },
        "vae": {
            "parameters": params(pipe.vae),
            "block_out_channels": list(vae.block_out_channels),
            "scaling_factor": vae.scaling_factor,
        },
        **encoders,
    }


def run_info(opts: InfoOptions) -> dict:
    info = describe(load_model(opts))
    if opts.json:
        print(json.dumps(info, indent=2))
        return info
    print(f"model           {info['model']}  (hash {info['model_hash']})")
    print(f"family          {FAMILY_NAMES[info['family']]}")
    print(
        f"resolution      {info['resolution']}x{info['resolution']} px, latents {'x'.join(map(str, info['latent_shape']))}"
    )
    print(f"scheduler       {info['scheduler']}, {info['prediction_type']} prediction")
    if info["recommended_sampling"]:
        recommended = ", ".join(f"{k} {v}" for k, v in info["recommended_sampling"].items())
        print(f"recommended     {recommended} (sdlab.json; sdlab's defaults for this model)")
    print(f"dtype           {info['dtype']}")
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if name not in info:
            continue
        part = info[name]
        rest = ", ".join(f"{k} {v}" for k, v in part.items() if k != "parameters")
        print(f"{name:<15} {part['parameters'] / 1e6:.2f} M parameters; {rest}")
    if info["inpainting_unet"]:
        print("inpainting      9-channel UNet (latents + mask + masked image)")
    if info["tiny_decoder"]:
        print(f"tiny decoder    {info['tiny_decoder']}/ (AutoencoderTiny): --vae-decoder tiny")
    return info


def run_convert(opts: ConvertOptions) -> Path:
    from sdlab.loading.export import save_single_file
    from sdlab.loading.folder import save_folder

    output = Path(opts.output)
    if output.exists() and output.suffix != ".safetensors" and not (output / "model_index.json").exists():
        raise InputError(f"output {output} exists and is not a diffusers model folder; choose a new path")
    pipe = load_model(opts)
    if output.suffix == ".safetensors":
        path = save_single_file(pipe, output, dtype=torch.float16 if opts.half else None)
    else:
        path = save_folder(pipe, output, weights_dtype=torch.float16 if opts.half else None)
    print(path)
    return path
