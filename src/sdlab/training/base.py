"""`sdlab train-base`: a complete Stable Diffusion trained from scratch on handwritten digits.

Stages, each leaving its artifact in the run folder so that a rerun skips what is done:
    1. captioner  - a digit classifier (captions are written by it, as the seed's recipe asks)
    2. vae        - AutoencoderKL on 32x32 digits; its latent std sets `scaling_factor`
    3. latents    - the training set encoded once (posterior mean and std, sampled afresh every step)
    4. text       - optional (`text_pretrain_steps`): the text encoder pretrained CLIP-style, captions
                    matched contrastively to the captioner's image features (training/contrastive.py)
    5. unet       - UNet + text encoder, trained jointly on the noise-prediction loss with ~10% empty
                    captions (for classifier-free guidance), min-SNR weighting and EMA
    6. model      - the EMA weights saved as a diffusers folder that StableDiffusionPipeline loads

The three trained stages (vae, text, unet) run on the one training loop (`TrainLoop`), each in
`RUN_DIR/stages/NAME/` with its checkpoints and loss.csv; `--resume` continues the stage that was
interrupted, bit for bit. With `data=DIR` (`--data`), a folder of captioned images replaces the digits
and stage 1 is skipped.
"""

from __future__ import annotations

import copy
import functools
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from diffusers import AutoencoderKL, DDPMScheduler
from diffusers.training_utils import EMAModel
from transformers import CLIPTextModel

from sdlab.atomic import atomic_path
from sdlab.datasets import load_pixels, read_folder
from sdlab.digits.architecture import SCHEDULER_CONFIG, DigitsArchitecture
from sdlab.digits.attributes import measure
from sdlab.digits.captioner import DigitsCaptioner
from sdlab.digits.classifier import DigitClassifier, accuracy, train_classifier
from sdlab.digits.data import to_gray, to_pixels, train_test_split
from sdlab.errors import InputError
from sdlab.images import make_grid, save_png
from sdlab.loading.folder import save_folder
from sdlab.loading.tokenizer import clip_tokenizer
from sdlab.options import option
from sdlab.pipeline import Pipeline
from sdlab.training.checkpoints import CheckpointManager, run_options
from sdlab.training.contrastive import contrastive_pretrain
from sdlab.training.data import diffusion_loss, encode_text
from sdlab.training.loop import OPTIMIZERS, TrainConfig, TrainLoop, append_csv

STAGES = ("vae", "text", "unet")  # the trained stages, in order: RUN_DIR/stages/NAME/


@dataclass
class BaseTrainConfig:
    """The options of `sdlab train-base`; the defaults are the shipped model's (`--preset full`), and
    `PRESETS` holds the other presets' changes. `architecture` is chosen by the preset, not a flag."""

    run_dir: str = option("runs/digits", "folder for stages, checkpoints, loss logs and validation grids")
    output: str | None = option(
        None, "where to write the final diffusers model (default: RUN_DIR/model)", "-o", "--output-dir"
    )
    data: str | None = option(
        None,
        "train on this folder of captioned images (metadata.jsonl or .txt sidecars) instead of the digits",
    )
    seed: int = option(0, "seed of every stage's initial weights, batches, noise and timesteps")
    architecture: DigitsArchitecture = field(default_factory=DigitsArchitecture)
    classifier_epochs: int = option(6, "epochs of the captioner (stage 1)")
    vae_steps: int = option(2000, "VAE training steps (stage 2)")
    vae_lr: float = option(2e-3, "VAE learning rate (cosine schedule)")
    kl_weight: float = option(1e-6, "KL weight of the VAE loss (as SD's: latents kept near N(0, s^2))")
    text_pretrain_steps: int = option(
        0, "CLIP-style contrastive steps of the text encoder, 0 for none (stage 4)"
    )
    text_pretrain_lr: float = option(2e-3, "contrastive stage's peak learning rate (one-cycle schedule)")
    unet_steps: int = option(6000, "UNet + text encoder training steps (stage 5)", "--max-train-steps")
    batch_size: int = option(64, "global batch size of the VAE and UNet stages (the contrastive stage takes twice it)",
                             "--train-batch-size")  # fmt: skip
    unet_lr: float = option(1e-3, "UNet + text encoder learning rate", "--learning-rate")
    warmup_steps: int = option(
        200, "learning-rate warm-up steps of the VAE and UNet stages", "--lr-warmup-steps"
    )
    lr_scheduler: str = option(
        "cosine", "UNet stage's schedule: any diffusers name, e.g. constant_with_warmup"
    )
    optimizer: str = option("adamw", "adamw, adafactor or prodigy (see sdlab lora --help)",
                            choices=list(OPTIMIZERS))  # fmt: skip
    gradient_accumulation_steps: int = option(
        1, "micro-batches per process and step: less memory, the same step"
    )
    max_grad_norm: float = option(1.0, "clip the UNet stage's gradient norm to this (0: no clipping)")
    caption_dropout: float = option(0.1, "share of empty captions (teaches CFG's unconditional branch)")
    attribute_keep: float = option(0.7, "share of the captions of a digit with a style that name the style")
    snr_gamma: float = option(5.0, "min-SNR loss weighting gamma (Hang et al. 2023); 0 for plain MSE")
    ema_decay: float = option(0.999, "EMA decay of the saved UNet and text encoder")
    validate_every: int = option(1000, "UNet steps between validation grids")
    checkpoint_every: int = option(
        500, "steps between resumable checkpoints, in every stage", "--checkpointing-steps"
    )
    keep_checkpoints: int = option(2, "complete checkpoints to keep per stage", "--checkpoints-total-limit")
    mixed_precision: str = option("no", "no, fp16 or bf16 (accelerate's mixed precision)")
    half: bool = option(True, "store the final weights in float16 (the shipped model is small)")
    guidance_scale: float = option(
        1.5, "recommended CFG written to the model's sdlab.json (best FID at accuracy >= 0.99 in the sweep)"
    )
    resume: bool = option(False, "continue the interrupted stage from its latest complete checkpoint")


PRESETS: dict[str, dict] = {
    # half-width UNet, 2-layer text encoder given CLIP's head start (contrastive pretraining), highest-accuracy CFG;
    # measured end to end on the 2-core CPU in the README (without the text stage, 1,500 UNet steps reached only 0.78)
    "quick": dict(
        architecture=DigitsArchitecture(unet_channels=(32, 64, 64), text_layers=2),
        vae_steps=500, text_pretrain_steps=300, unet_steps=1000, validate_every=500, guidance_scale=7.5,
    ),
    # the shipped model
    "full": dict(vae_steps=2000, unet_steps=6000),
    # seconds: for tests
    "tiny": dict(
        architecture=DigitsArchitecture(vae_channels=(8, 8, 8), unet_channels=(16, 16, 16), text_width=16, text_layers=1),
        classifier_epochs=1, vae_steps=4, text_pretrain_steps=20, unet_steps=6, batch_size=8, warmup_steps=1,
        validate_every=3, checkpoint_every=3,
    ),
}  # fmt: skip


def train_base(cfg: BaseTrainConfig, *, resume: bool | None = None, limit_train: int | None = None) -> Path:
    """Run every stage not yet done in `cfg.run_dir`; returns the final model folder.

    `resume` (default: `cfg.resume`) continues an interrupted stage; without it a stage that has
    checkpoints but no artifact is refused with a sentence. Raises `InputError` for options that differ
    from the checkpoints', `TrainingError` when a loss becomes NaN/inf.
    """
    run = Path(cfg.run_dir)
    resume = cfg.resume if resume is None else resume
    _check_stages(cfg, run, resume)  # before any stage runs
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=list) + "\n")
    if cfg.data:
        # a folder of captioned images (metadata.jsonl or .txt sidecars) instead of the MNIST digits
        items = read_folder(cfg.data)
        pixels = load_pixels(items, cfg.architecture.image_size)
        captions = [_fixed_caption(item.caption) for item in items]
        validation_prompts = list(dict.fromkeys(item.caption for item in items))[:10]
        captioner_file = None
    else:
        train, test = train_test_split()
        if limit_train:
            train = train.subset(np.arange(limit_train))
        # 1. Captioner: the classifier whose readings become the training captions
        captioner_file = run / "captioner.safetensors"
        if not captioner_file.exists():
            clf = train_classifier(train.images, train.labels, seed=cfg.seed, epochs=cfg.classifier_epochs)
            clf.save(captioner_file)
            PartialState().print(
                f"captioner: held-out accuracy {accuracy(clf, test.images, test.labels):.4f}"
            )
        facts = DigitsCaptioner.load(captioner_file).facts(train.images)
        pixels = to_pixels(train.images)
        captions = [functools.partial(f.caption, keep=cfg.attribute_keep) for f in facts]
        validation_prompts = [f"a handwritten digit {d}" for d in range(10)]

    # 2. VAE
    vae_dir = run / "vae"
    if not (vae_dir / "config.json").exists():
        train_vae(cfg, pixels, vae_dir, resume=resume)
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()

    # 3. Latents: posterior mean and std of every training image, and the scaling factor
    mean, std = encode_dataset(vae, pixels)
    sample = mean + std * torch.randn(std.shape, generator=torch.Generator().manual_seed(cfg.seed))
    scaling = 1.0 / float(sample.std())  # unit-variance latents, as SD's 0.18215 was chosen
    vae.register_to_config(scaling_factor=scaling)

    # 4. The text encoder's head start: CLIP's contrastive objective against the captioner's image features
    text_dir = run / "text_encoder"
    if cfg.text_pretrain_steps and captioner_file is None:
        PartialState().print(
            "--data: no captioner features to pretrain the text encoder against; stage skipped"
        )
    elif cfg.text_pretrain_steps and not (text_dir / "config.json").exists():
        features = _digit_features(captioner_file, train.images)
        pretrain_text_encoder(cfg, captions, features, text_dir, resume=resume)
    text_encoder = CLIPTextModel.from_pretrained(text_dir) if (text_dir / "config.json").exists() else None

    # 5. UNet + text encoder
    pipe = train_unet(
        cfg, vae, mean, std, captions, validation_prompts, run, resume=resume, text_encoder=text_encoder
    )

    # 6. The model folder
    output = Path(cfg.output or run / "model")
    pipe.sampling_defaults = {"guidance_scale": cfg.guidance_scale}
    if _is_main():
        save_folder(pipe, output, weights_dtype=torch.float16 if cfg.half else None)
        if captioner_file is not None:
            (output / "captioner.safetensors").write_bytes(captioner_file.read_bytes())
    return output


def stage_config(cfg: BaseTrainConfig, name: str, *, resume: bool, **changes) -> TrainConfig:
    """The training loop's options for stage `name` (one of `STAGES`), in RUN_DIR/stages/NAME/."""
    out = Path(cfg.run_dir) / "stages" / name
    has_checkpoint = CheckpointManager(out / "checkpoints", None).latest() is not None
    common = dict(
        output=str(out), batch_size=cfg.batch_size, warmup_steps=cfg.warmup_steps, seed=cfg.seed,
        optimizer=cfg.optimizer, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints, validate_every=0,
        mixed_precision=cfg.mixed_precision, resume="latest" if resume and has_checkpoint else None,
    )  # fmt: skip
    return TrainConfig(**{**common, **changes})


def _check_stages(cfg: BaseTrainConfig, run: Path, resume: bool) -> None:
    """Refuse, before anything runs, to resume with other options, or to start over an unfinished stage."""
    options = run_options(cfg)
    for name in STAGES:
        checkpoints = CheckpointManager(run / "stages" / name / "checkpoints", None, options=options)
        latest = checkpoints.latest()
        if latest is None:
            continue
        if not resume:
            raise InputError(
                f"{run} has checkpoints of the {name} stage; pass --resume to continue, or choose another --run-dir"
            )
        checkpoints.check_options(latest)


def _is_main() -> bool:
    return PartialState().is_main_process


class VAETraining(torch.nn.Module):
    """The VAE's training forward: reconstruction and KL of a batch, given the posterior's noise."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * eps  # = posterior.sample(), with the noise drawn up front
        return self.vae.decode(z).sample, posterior.kl()


def train_vae(cfg: BaseTrainConfig, pixels: torch.Tensor, out: Path, *, resume: bool = False) -> None:
    """Stage 2: AutoencoderKL on `pixels` (N, 3, H, W in [-1, 1]), MSE + `kl_weight` x KL; saved to `out`."""
    stage = stage_config(
        cfg, "vae", resume=resume, steps=cfg.vae_steps, learning_rate=cfg.vae_lr, lr_scheduler="cosine",
        max_grad_norm=0.0,
    )  # fmt: skip
    loop = TrainLoop(stage, options=run_options(cfg))
    torch.manual_seed(cfg.seed)
    vae = cfg.architecture.vae()
    (model,) = loop.prepare(VAETraining(vae), params=list(vae.parameters()), weight_decay=0.0)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    side = cfg.architecture.image_size // factor

    def draw(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = pixels[torch.randint(len(pixels), (cfg.batch_size,), generator=loop.rng.torch)]
        # the posterior's noise from torch's global stream (accelerate checkpoints it), as the shipped model drew it
        eps = torch.randn(cfg.batch_size, vae.config.latent_channels, side, side)
        return x, eps

    def loss(batch: tuple[torch.Tensor, torch.Tensor], rows: slice) -> torch.Tensor:
        x, eps = (v[rows].to(loop.accelerator.device) for v in batch)
        recon, kl = model(x, eps)
        return torch.nn.functional.mse_loss(recon, x) + cfg.kl_weight * kl.mean()

    loop.run(draw, loss, desc="vae")
    if loop.accelerator.is_main_process:
        with atomic_path(out) as tmp:
            vae.save_pretrained(tmp)
    loop.accelerator.wait_for_everyone()


def _digit_features(captioner_file: Path, images: np.ndarray) -> torch.Tensor:
    """What the contrastive stage matches captions to: the captioner's features and the measured style."""
    gray = torch.as_tensor(images, dtype=torch.float32) / 255
    style = measure(gray.numpy())
    measured = torch.tensor(np.stack([style.thickness, style.slant, style.size], axis=1), dtype=torch.float32)
    return torch.cat([DigitClassifier.load(captioner_file).features_of(gray), measured], dim=1)


def pretrain_text_encoder(
    cfg: BaseTrainConfig, captions: list, image_features: torch.Tensor, out: Path, *, resume: bool = False
) -> None:
    """Stage 4: CLIP's contrastive objective (training/contrastive.py) at twice the batch, one-cycle LR."""
    stage = stage_config(
        cfg, "text", resume=resume, steps=cfg.text_pretrain_steps, batch_size=2 * cfg.batch_size,
        learning_rate=cfg.text_pretrain_lr, max_grad_norm=0.0,
    )  # fmt: skip
    loop = TrainLoop(stage, options=run_options(cfg))
    torch.manual_seed(cfg.seed)
    text_encoder = contrastive_pretrain(
        loop, cfg.architecture.text_encoder(), clip_tokenizer(), captions, image_features
    )
    if loop.accelerator.is_main_process:
        with atomic_path(out) as tmp:
            text_encoder.save_pretrained(tmp)
    loop.accelerator.wait_for_everyone()


@torch.no_grad()
def encode_dataset(
    vae: AutoencoderKL, pixels: torch.Tensor, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for i in range(0, len(pixels), batch):
        dist = vae.encode(pixels[i : i + batch].to(vae.device)).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    return torch.cat(means), torch.cat(stds)


def train_unet(
    cfg: BaseTrainConfig,
    vae: AutoencoderKL,
    mean: torch.Tensor,
    std: torch.Tensor,
    captions: list[Callable[[random.Random], str]],
    validation_prompts: list[str],
    run: Path,
    *,
    resume: bool = False,
    text_encoder: CLIPTextModel | None = None,
) -> Pipeline:
    """Stage 5: UNet and text encoder on the noise-prediction loss, EMA of both; returns the EMA pipeline."""
    stage = stage_config(
        cfg, "unet", resume=resume, steps=cfg.unet_steps, learning_rate=cfg.unet_lr, lr_scheduler=cfg.lr_scheduler,
        max_grad_norm=cfg.max_grad_norm, validate_every=cfg.validate_every,
    )  # fmt: skip
    loop = TrainLoop(stage, options=run_options(cfg))
    torch.manual_seed(cfg.seed)
    unet = cfg.architecture.unet()
    text_encoder = text_encoder if text_encoder is not None else cfg.architecture.text_encoder()
    tokenizer = clip_tokenizer()
    noise_scheduler = DDPMScheduler.from_config(SCHEDULER_CONFIG)
    ema_unet = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True)
    ema_text = EMAModel(text_encoder.parameters(), decay=cfg.ema_decay, use_ema_warmup=True)
    unet.train()
    text_encoder.train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    unet_p, text_p = loop.prepare(unet, text_encoder, params=params, weight_decay=1e-2)
    loop.register(ema_unet, ema_text)
    scale = vae.config.scaling_factor
    rng = loop.rng

    def draw(step: int) -> tuple[torch.Tensor, list[str], torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(mean), (cfg.batch_size,), generator=rng.torch)
        latents = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=rng.torch)) * scale
        texts = ["" if rng.py.random() < cfg.caption_dropout else captions[i](rng.py) for i in idx.tolist()]
        noise = torch.randn(latents.shape, generator=rng.torch)
        t = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=rng.torch
        )
        return latents, texts, noise, t

    def loss(batch, rows: slice) -> torch.Tensor:
        latents, texts, noise, t = batch
        embeds = encode_text(tokenizer, text_p, texts[rows])
        return diffusion_loss(
            unet_p, noise_scheduler, latents[rows], embeds, noise[rows], t[rows], cfg.snr_gamma
        ).mean()

    def after_step() -> None:
        ema_unet.step(unet.parameters())
        ema_text.step(text_encoder.parameters())

    def validate(step: int) -> None:
        _validate(
            _ema_pipeline(unet, text_encoder, ema_unet, ema_text, vae, tokenizer),
            run,
            step,
            validation_prompts,
        )

    loop.run(draw, loss, after_step=after_step, validate=validate, desc="unet")
    return _ema_pipeline(unet, text_encoder, ema_unet, ema_text, vae, tokenizer)


def _ema_pipeline(unet, text_encoder, ema_unet, ema_text, vae, tokenizer) -> Pipeline:
    """A standalone Pipeline holding copies of the EMA weights (training weights untouched)."""
    u = copy.deepcopy(unet).eval()
    te = copy.deepcopy(text_encoder).eval()
    ema_unet.copy_to(u.parameters())
    ema_text.copy_to(te.parameters())
    return Pipeline(
        unet=u,
        vae=vae,
        text_encoder=te,
        tokenizer=tokenizer,
        scheduler_config=dict(SCHEDULER_CONFIG),
        name="digits",
    )


def _validate(pipe: Pipeline, run: Path, step: int, prompts: list[str]) -> None:
    """A grid of the validation prompts; for the digits, how many the captioner reads as the prompted digit."""
    result = pipe.generate(
        prompts, num_inference_steps=20, guidance_scale=4.0, seed=0, num_images_per_prompt=2
    )
    save_png(make_grid(result.images, cols=len(prompts)), run / "validation" / f"step-{step:06d}.png")
    captioner = run / "captioner.safetensors"
    if not captioner.exists():
        return
    clf = DigitClassifier.load(captioner)
    wanted = torch.arange(10).repeat_interleave(2)
    hits = (clf.predict(to_gray(result.pixels)) == wanted).float().mean()
    print(f"\nstep {step}: validation prompt accuracy {hits:.2f}")
    append_csv(run / "validation.csv", {"step": step, "prompt_accuracy": float(hits)})


def _fixed_caption(text: str) -> Callable[[random.Random], str]:
    return lambda rng: text
