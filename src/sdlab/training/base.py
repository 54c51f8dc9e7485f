"""`sdlab train-base`: a complete Stable Diffusion trained from scratch on handwritten digits.

Stages, each leaving its artifact in the run folder so that a rerun skips what is done:
    1. captioner  - a digit classifier (captions are written by it, as the lesson notes' recipe asks)
    2. vae        - AutoencoderKL on 32x32 digits; its latent std sets `scaling_factor`
    3. latents    - the training set encoded once (posterior mean and std, sampled afresh every step)
    4. text       - optional (`text_pretrain_steps`): the text encoder pretrained CLIP-style, captions
                    matched contrastively to the captioner's image features (training/contrastive.py)
    5. unet       - UNet + text encoder, trained jointly on the noise-prediction loss with ~10% empty
                    captions (for classifier-free guidance), min-SNR weighting and EMA
    6. model      - the EMA weights saved as a diffusers folder that StableDiffusionPipeline loads

The three trained stages (vae, text, unet; `training/stages.py`) run on the one training loop, each in
`RUN_DIR/stages/NAME/` with its checkpoints and loss.csv; `--resume` continues the stage that was
interrupted, bit for bit. With `data=DIR` (`--data`), a folder of captioned images replaces the digits
and stage 1 is skipped.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from diffusers import AutoencoderKL
from transformers import CLIPTextModel

from sdlab.datasets import load_pixels, read_folder
from sdlab.digits.architecture import DigitsArchitecture
from sdlab.digits.captioner import DigitsCaptioner
from sdlab.digits.classifier import accuracy, train_classifier
from sdlab.digits.data import to_pixels, train_test_split
from sdlab.errors import InputError
from sdlab.loading.folder import save_folder
from sdlab.options import option, same_as
from sdlab.sampling.params import SamplingParams
from sdlab.training.checkpoints import CheckpointManager, run_options
from sdlab.training.data import encode_dataset
from sdlab.training.loop import OPTIMIZERS, TrainConfig, TrainLoop
from sdlab.training.stages import (
    digit_features,
    pretrain_text_encoder,
    train_unet,
    train_vae,
)

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
    log_every: int = same_as(TrainConfig, "log_every")
    half: bool = option(True, "store the final weights in float16 (the shipped model is small)")
    guidance_scale: float = option(
        1.5, "recommended CFG written to the model's sdlab.json (best FID at accuracy >= 0.99 in the sweep)"
    )
    resume: bool = option(False, "continue the interrupted stage from its latest complete checkpoint")

    def check(self) -> None:
        """Raise `InputError` naming the first option out of range, before any stage runs."""
        positive = ("classifier_epochs", "vae_steps", "unet_steps", "batch_size", "validate_every", "checkpoint_every",
                    "keep_checkpoints", "gradient_accumulation_steps")  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not isinstance(self.text_pretrain_steps, int) or self.text_pretrain_steps < 0:
            raise InputError(f"--text-pretrain-steps must be 0 or more, got {self.text_pretrain_steps!r}")
        for name in ("vae_lr", "unet_lr", "text_pretrain_lr"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise InputError(f"--{name.replace('_', '-')} must be a positive number, got {value}")


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
    cfg.check()
    stages = stage_configs(cfg, resume)  # every option checked, and the checkpoints, before any stage runs
    _check_stages(cfg, run, resume)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=list) + "\n")
    timings: dict[str, float] = {}  # wall seconds of each stage run by this call (finished ones are skipped)
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
        with PartialState().main_process_first():  # trained once; the other processes read it
            if not captioner_file.exists():
                start = time.perf_counter()
                clf = train_classifier(
                    train.images, train.labels, seed=cfg.seed, epochs=cfg.classifier_epochs
                )
                clf.save(captioner_file)
                timings["captioner"] = time.perf_counter() - start
                print(f"captioner: held-out accuracy {accuracy(clf, test.images, test.labels):.4f}")
        facts = DigitsCaptioner.load(captioner_file).facts(train.images)
        pixels = to_pixels(train.images)
        captions = [functools.partial(f.caption, keep=cfg.attribute_keep) for f in facts]
        validation_prompts = [f"a handwritten digit {d}" for d in range(10)]

    # 2. VAE
    vae_dir = run / "vae"
    if not (vae_dir / "config.json").exists():
        start = time.perf_counter()
        train_vae(cfg, TrainLoop(stages["vae"], options=stage_options(cfg, "vae")), pixels, vae_dir)
        timings["vae"] = time.perf_counter() - start
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
        start = time.perf_counter()
        features = digit_features(captioner_file, train.images)
        loop = TrainLoop(stages["text"], options=stage_options(cfg, "text"))
        pretrain_text_encoder(cfg, loop, captions, features, text_dir)
        timings["text"] = time.perf_counter() - start
    text_encoder = CLIPTextModel.from_pretrained(text_dir) if (text_dir / "config.json").exists() else None

    # 5. UNet + text encoder
    start = time.perf_counter()
    pipe = train_unet(
        cfg,
        TrainLoop(stages["unet"], options=stage_options(cfg, "unet")),
        vae,
        mean,
        std,
        captions,
        validation_prompts,
        run,
        text_encoder=text_encoder,
    )
    timings["unet"] = time.perf_counter() - start

    # 6. The model folder
    output = Path(cfg.output or run / "model")
    pipe.recommended = SamplingParams(guidance_scale=cfg.guidance_scale)
    if _is_main():
        save_folder(pipe, output, weights_dtype=torch.float16 if cfg.half else None)
        if captioner_file is not None:
            (output / "captioner.safetensors").write_bytes(captioner_file.read_bytes())
        _write_timings(run / "timings.json", cfg, timings)
    return output


def _write_timings(path: Path, cfg: BaseTrainConfig, timings: dict[str, float]) -> None:
    """`RUN/timings.json`: each stage's wall seconds in this call, with the command, machine and date (the docs'
    training-time table is rendered from it)."""
    from sdlab.evaluation.provenance import write_measurement

    work = {
        "captioner": f"{cfg.classifier_epochs} epochs", "vae": f"{cfg.vae_steps} steps",
        "text": f"{cfg.text_pretrain_steps} steps", "unet": f"{cfg.unet_steps} steps",
    }  # fmt: skip
    stages = [{"stage": name, "work": work[name], "seconds": round(s, 1)} for name, s in timings.items()]
    write_measurement(path, {"stages": stages, "total_seconds": round(sum(timings.values()), 1)})


# Options that shape only a later stage: a stage's checkpoints are compared with the others, so a finished
# VAE stage does not stop a resume that changes the UNet's learning rate.
LATER_ONLY = {
    "vae": {"text_pretrain_steps", "text_pretrain_lr", "unet_steps", "unet_lr", "lr_scheduler", "max_grad_norm",
            "caption_dropout", "snr_gamma", "ema_decay"},
    "text": {"unet_steps", "unet_lr", "lr_scheduler", "max_grad_norm", "caption_dropout", "snr_gamma", "ema_decay"},
    "unet": set(),
}  # fmt: skip
ARTIFACTS = {"vae": "vae/config.json", "text": "text_encoder/config.json", "unet": None}  # a stage is done


def stage_configs(cfg: BaseTrainConfig, resume: bool) -> dict[str, TrainConfig]:
    """The training loop's options of each stage, in RUN_DIR/stages/NAME/, each checked (`InputError`)."""

    def stage(name: str, **changes) -> TrainConfig:
        out = Path(cfg.run_dir) / "stages" / name
        has_checkpoint = CheckpointManager(out / "checkpoints", None).latest() is not None
        common = dict(
            output=str(out), batch_size=cfg.batch_size, warmup_steps=cfg.warmup_steps, seed=cfg.seed,
            optimizer=cfg.optimizer, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints, validate_every=0,
            mixed_precision=cfg.mixed_precision, resume="latest" if resume and has_checkpoint else None,
            log_every=cfg.log_every,
        )  # fmt: skip
        config = TrainConfig(**{**common, **changes})
        config.check()
        return config

    stages = {
        "vae": stage("vae", steps=cfg.vae_steps, learning_rate=cfg.vae_lr, lr_scheduler="cosine", max_grad_norm=0.0),
        "unet": stage("unet", steps=cfg.unet_steps, learning_rate=cfg.unet_lr, lr_scheduler=cfg.lr_scheduler,
                      max_grad_norm=cfg.max_grad_norm, validate_every=cfg.validate_every),
    }  # fmt: skip
    if cfg.text_pretrain_steps:  # twice the batch: more negatives for the contrastive loss
        stages["text"] = stage(
            "text", steps=cfg.text_pretrain_steps, batch_size=2 * cfg.batch_size, learning_rate=cfg.text_pretrain_lr,
            max_grad_norm=0.0,
        )  # fmt: skip
    return stages


def stage_options(cfg: BaseTrainConfig, name: str) -> dict:
    """What a resume of stage `name` must repeat: every option but those of later stages."""
    return {k: v for k, v in run_options(cfg).items() if k not in LATER_ONLY[name]}


def _check_stages(cfg: BaseTrainConfig, run: Path, resume: bool) -> None:
    """Refuse, before anything runs, to resume with other options, or to start over an unfinished stage."""
    if CheckpointManager(run / "checkpoints", None).latest() is not None:
        raise InputError(
            f"{run / 'checkpoints'} was written by an older sdlab (checkpoints now live in {run / 'stages'}); "
            "start a new run in another --run-dir"
        )
    for name in STAGES:
        if ARTIFACTS[name] and (run / ARTIFACTS[name]).exists():
            continue  # done: a rerun skips it
        checkpoints = CheckpointManager(
            run / "stages" / name / "checkpoints", None, options=stage_options(cfg, name)
        )
        latest = checkpoints.latest()
        if latest is None:
            continue
        if not resume:
            raise InputError(
                f"{run} has checkpoints of the unfinished {name} stage; pass --resume to continue, "
                "or choose another --run-dir"
            )
        checkpoints.check_options(latest)


def _is_main() -> bool:
    return PartialState().is_main_process


def _fixed_caption(text: str) -> Callable[[random.Random], str]:
    return lambda rng: text
