"""`sdlab distill-decoder`: a tiny decoder distilled from a model's own VAE.

The student is diffusers' `AutoencoderTiny`, the architecture of TAESD (Boer 2023): plain 3x3 convolutions
and nearest-neighbour upsampling, no attention and no normalisation, so it decodes in a fraction of the
full VAE's time. It reads the model's *scaled* latents (what the UNet denoises) directly, as TAESD does.

The teacher is the model's VAE. Each step draws latents from the VAE's posterior of the training images
(mean + std x noise, times the scaling factor: the latents the UNet was trained to make) and trains

- the decoder to give the image the VAE's decoder gives for those latents (MSE in [-1, 1]), and
- the encoder to give the VAE's scaled posterior mean for the image (MSE),

so the result works wherever an `AutoencoderTiny` is expected (diffusers' pipelines take it as their
`vae`). sdlab uses it to decode: `sdlab generate --vae-decoder tiny` (the model folder's `vae_tiny/`) or
`--vae-decoder DIR`, and `sdlab serve --vae-decoder` for live previews.

TAESD itself adds adversarial and perceptual losses for photographs at 512 pixels; at the digits model's
32 pixels the distillation MSE is enough (its cost in FID: README, "The tiny decoder").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from PIL import Image

from sdlab.atomic import atomic_path
from sdlab.errors import InputError
from sdlab.images import make_grid, save_png
from sdlab.loading.decoder import TINY_FOLDER
from sdlab.options import option
from sdlab.training.data import encode_dataset
from sdlab.training.loop import TrainLoop, append_csv, truncate_csv
from sdlab.training.teacher import TeacherConfig, load_teacher, training_images


@dataclass
class DecoderDistillConfig(TeacherConfig):
    width: int = option(16, "channels of every block of the tiny decoder and encoder (TAESD: 64)")
    depth: int = option(1, "AutoencoderTiny blocks per resolution (TAESD: 3)")
    steps: int = option(3000, "optimizer steps", "--max-train-steps")
    batch_size: int = option(64, "global batch size per optimizer step", "--train-batch-size")
    learning_rate: float = option(1e-3, "the optimizer's learning rate", "--lr")
    lr_scheduler: str = option("cosine", "constant, cosine, linear, ... (diffusers')")
    checkpoint_every: int = option(500, "save a resumable checkpoint every N steps", "--checkpointing-steps")

    def check(self) -> None:
        super().check()
        for name in ("width", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"--{name} must be a positive integer, got {value!r}")


def tiny_autoencoder(vae: AutoencoderKL, width: int, depth: int) -> AutoencoderTiny:
    """An untrained `AutoencoderTiny` that reads `vae`'s latents: its channels, and one 2x upsampling per
    VAE level (levels = len(block_out_channels)), `depth` blocks per level, `width` channels throughout."""
    levels = len(vae.config.block_out_channels)
    return AutoencoderTiny(
        in_channels=vae.config.in_channels,
        out_channels=vae.config.out_channels,
        latent_channels=vae.config.latent_channels,
        encoder_block_out_channels=(width,) * levels,
        decoder_block_out_channels=(width,) * levels,
        num_encoder_blocks=(1,) + (depth,) * (levels - 1),
        num_decoder_blocks=(depth,) * (levels - 1) + (1,),
    )


class TinyAutoencoderLoss(torch.nn.Module):
    """The student's training forward: decoder and encoder MSE against the teacher's outputs."""

    def __init__(self, student: AutoencoderTiny) -> None:
        super().__init__()
        self.student = student

    def forward(
        self, latents: torch.Tensor, decoded: torch.Tensor, pixels: torch.Tensor, encoded: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mse = torch.nn.functional.mse_loss
        decoder = mse(self.student.decode(latents).sample, decoded)
        encoder = mse(self.student.encode(pixels).latents, encoded)
        return decoder, encoder


def distill_decoder(cfg: DecoderDistillConfig) -> Path:
    """Train, then write the `AutoencoderTiny` as a diffusers folder at OUTPUT/vae_tiny.

    Raises `InputError` for a missing or empty data folder, and when neither a folder nor the digits
    model (whose training digits are the default data) is given (`teacher.training_images`)."""
    loop = TrainLoop(cfg)
    device = loop.accelerator.device
    pipe = load_teacher(cfg, device)
    teacher = pipe.vae
    pixels, _ = training_images(cfg, pipe)
    mean, std = encode_dataset(teacher, pixels)
    scale, shift = teacher.config.scaling_factor, teacher.config.shift_factor or 0.0
    with torch.random.fork_rng(
        devices=[]
    ):  # the student's initial weights from --seed; torch's stream as it was
        torch.manual_seed(cfg.seed)
        student = tiny_autoencoder(teacher, cfg.width, cfg.depth)
    (model,) = loop.prepare(TinyAutoencoderLoss(student), params=list(student.parameters()), weight_decay=0.0)
    fixed = torch.Generator().manual_seed(cfg.seed + 1)  # the same 16 validation latents at every validation
    pick = torch.randperm(len(pixels), generator=fixed)[:16]
    val_latents = (mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=fixed) - shift) * scale
    last: dict[str, torch.Tensor] = {}

    def draw(step: int) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(len(pixels), (cfg.batch_size,), generator=loop.rng.torch)
        latents = (
            mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=loop.rng.torch) - shift
        ) * scale
        return latents, pixels[idx], (mean[idx] - shift) * scale

    def loss(batch: tuple[torch.Tensor, ...], rows: slice) -> torch.Tensor:
        latents, x, encoded = (v[rows].to(device) for v in batch)
        with torch.no_grad():
            decoded = teacher.decode(latents / scale + shift).sample.clamp(-1, 1)
        decoder, encoder = model(latents, decoded, x, encoded)
        last.update(decoder_mse=decoder.detach(), encoder_mse=encoder.detach())  # read when the loop logs
        return decoder + encoder

    def validate(step: int) -> None:
        with torch.no_grad():
            ours = student.decode(val_latents.to(device)).sample.clamp(-1, 1)
            theirs = teacher.decode(val_latents.to(device) / scale + shift).sample.clamp(-1, 1)
        error = float(torch.nn.functional.mse_loss(ours, theirs))
        both = ((torch.cat([theirs, ours]).float().cpu() + 1) * 127.5).round().byte().permute(0, 2, 3, 1)
        images = [Image.fromarray(im.numpy()) for im in both]  # the VAE's row above the student's
        save_png(make_grid(images, cols=len(ours)), loop.out / "validation" / f"step-{step:06d}.png")
        truncate_csv(loop.out / "validation.csv", step - 1)  # a resumed run validates this step again
        append_csv(loop.out / "validation.csv", {"step": step, "decoder_mse": error})
        print(
            f"\nstep {step}: decoder MSE against the VAE on 16 latents {error:.5f} (PSNR {psnr(error):.1f} dB)"
        )

    loop.run(draw, loss, validate=validate, metrics=lambda: dict(last), desc="distill-decoder")
    output = loop.out / TINY_FOLDER
    if loop.accelerator.is_main_process:
        with atomic_path(output) as tmp:
            student.eval().save_pretrained(tmp)
    loop.accelerator.wait_for_everyone()
    return output


def psnr(mse: float) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2) with mean squared error `mse`."""
    return 10 * math.log10(4 / mse) if mse > 0 else math.inf
