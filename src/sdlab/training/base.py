"""`sdlab train-base`: a complete Stable Diffusion trained from scratch on handwritten digits.

Stages, each leaving its artifact in the run folder so that a rerun skips what is done:
    1. captioner  - a digit classifier (captions are written by it, as the seed's recipe asks)
    2. vae        - AutoencoderKL on 32x32 digits; its latent std sets `scaling_factor`
    3. latents    - the training set encoded once (posterior mean and std, sampled afresh every step)
    4. text       - optional (`text_pretrain_steps`): the text encoder pretrained CLIP-style, captions
                    matched contrastively to the captioner's image features (training/contrastive.py)
    5. unet       - UNet + text encoder, trained jointly on the noise-prediction loss with ~10% empty
                    captions (for classifier-free guidance), min-SNR weighting and EMA; resumable
    6. model      - the EMA weights saved as a diffusers folder that StableDiffusionPipeline loads

With `data=DIR` (`--data`), a folder of captioned images replaces the digits and stage 1 is skipped.
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
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr
from tqdm.auto import tqdm
from transformers import CLIPTextModel

from sdlab.atomic import atomic_path
from sdlab.datasets import load_pixels, read_folder
from sdlab.digits.architecture import SCHEDULER_CONFIG, DigitsArchitecture
from sdlab.digits.attributes import measure
from sdlab.digits.captioner import DigitsCaptioner
from sdlab.digits.classifier import DigitClassifier, accuracy, train_classifier
from sdlab.digits.data import to_gray, to_pixels, train_test_split
from sdlab.errors import InputError, TrainingError
from sdlab.images import make_grid, save_png
from sdlab.loading.folder import save_folder
from sdlab.loading.tokenizer import clip_tokenizer
from sdlab.pipeline import Pipeline
from sdlab.training.checkpoints import CheckpointManager, RandomState, run_options
from sdlab.training.contrastive import contrastive_pretrain
from sdlab.training.loop import append_csv, make_accelerator


@dataclass
class BaseTrainConfig:
    run_dir: str = "runs/digits"  # stages, checkpoints, logs and validation grids
    output: str | None = None  # final diffusers folder (default: RUN_DIR/model)
    data: str | None = None  # a folder of captioned images to train on instead of the MNIST digits
    seed: int = 0
    architecture: DigitsArchitecture = field(default_factory=DigitsArchitecture)
    classifier_epochs: int = 6
    vae_steps: int = 2000
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6  # as SD's VAE: a nearly deterministic autoencoder, latents kept near N(0, s^2)
    text_pretrain_steps: int = 0  # CLIP-style contrastive pretraining of the text encoder (digits only)
    text_pretrain_lr: float = 2e-3
    unet_steps: int = 6000
    batch_size: int = 64
    unet_lr: float = 1e-3
    warmup_steps: int = 200
    lr_scheduler: str = "cosine"  # any diffusers schedule name, e.g. constant_with_warmup
    caption_dropout: float = 0.1  # empty captions teach the unconditional branch of CFG
    attribute_keep: float = 0.7  # each style word appears in 70% of the captions of digits that have it
    snr_gamma: float = 5.0  # min-SNR-5 loss weighting (Hang et al. 2023): faster convergence
    ema_decay: float = 0.999
    validate_every: int = 1000
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    mixed_precision: str = "no"
    half: bool = True  # store the final weights in float16 (the shipped model is small)
    # recommended CFG written to the model's sdlab.json: best FID at accuracy >= 0.99 in the guidance sweep
    guidance_scale: float = 1.5


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


def train_base(cfg: BaseTrainConfig, *, resume: bool = False, limit_train: int | None = None) -> Path:
    """Run every stage not yet done in `cfg.run_dir`; returns the final model folder."""
    run = Path(cfg.run_dir)
    accelerator = make_accelerator(cfg.mixed_precision)
    if resume:  # other options than the checkpoint's are refused before any stage runs
        checkpoints = CheckpointManager(run / "checkpoints", accelerator, options=run_options(cfg))
        if (latest := checkpoints.latest()) is not None:
            checkpoints.check_options(latest)
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
            accelerator.print(f"captioner: held-out accuracy {accuracy(clf, test.images, test.labels):.4f}")
        facts = DigitsCaptioner.load(captioner_file).facts(train.images)
        pixels = to_pixels(train.images)
        captions = [functools.partial(f.caption, keep=cfg.attribute_keep) for f in facts]
        validation_prompts = [f"a handwritten digit {d}" for d in range(10)]

    # 2. VAE
    vae_dir = run / "vae"
    if not (vae_dir / "config.json").exists():
        # its own Accelerator: checkpoints of the UNet stage must not depend on whether this stage ran
        train_vae(cfg, pixels, vae_dir, make_accelerator(cfg.mixed_precision))
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()

    # 3. Latents: posterior mean and std of every training image, and the scaling factor
    mean, std = encode_dataset(vae, pixels)
    sample = mean + std * torch.randn(std.shape, generator=torch.Generator().manual_seed(cfg.seed))
    scaling = 1.0 / float(sample.std())  # unit-variance latents, as SD's 0.18215 was chosen
    vae.register_to_config(scaling_factor=scaling)

    # 4. The text encoder's head start: CLIP's contrastive objective against the captioner's image features
    text_dir = run / "text_encoder"
    if cfg.text_pretrain_steps and captioner_file is None:
        accelerator.print("--data: no captioner features to pretrain the text encoder against; stage skipped")
    elif cfg.text_pretrain_steps and not (text_dir / "config.json").exists():
        features = _digit_features(captioner_file, train.images)
        _pretrain_text_encoder(cfg, captions, features, text_dir, accelerator)
    text_encoder = CLIPTextModel.from_pretrained(text_dir) if (text_dir / "config.json").exists() else None

    # 5. UNet + text encoder
    pipe = train_unet(
        cfg,
        vae,
        mean,
        std,
        captions,
        validation_prompts,
        run,
        accelerator,
        resume=resume,
        text_encoder=text_encoder,
    )

    # 6. The model folder
    output = Path(cfg.output or run / "model")
    pipe.sampling_defaults = {"guidance_scale": cfg.guidance_scale}
    if accelerator.is_main_process:
        save_folder(pipe, output, weights_dtype=torch.float16 if cfg.half else None)
        if captioner_file is not None:
            (output / "captioner.safetensors").write_bytes(captioner_file.read_bytes())
    return output


def train_vae(cfg: BaseTrainConfig, pixels: torch.Tensor, out: Path, accelerator: Accelerator) -> None:
    torch.manual_seed(cfg.seed)
    vae = cfg.architecture.vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = get_scheduler("cosine", opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.vae_steps)
    vae, opt, sched = accelerator.prepare(vae, opt, sched)
    gen = torch.Generator().manual_seed(cfg.seed + accelerator.process_index)
    bar = tqdm(range(cfg.vae_steps), desc="vae", disable=not accelerator.is_local_main_process)
    for step in bar:
        x = pixels[torch.randint(len(pixels), (cfg.batch_size,), generator=gen)].to(accelerator.device)
        posterior = accelerator.unwrap_model(vae).encode(x).latent_dist
        recon = accelerator.unwrap_model(vae).decode(posterior.sample()).sample
        loss = torch.nn.functional.mse_loss(recon, x) + cfg.kl_weight * posterior.kl().mean()
        accelerator.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if accelerator.is_main_process:
            append_csv(out.parent / "vae_loss.csv", {"step": step + 1, "loss": loss.item()})
    if accelerator.is_main_process:
        with atomic_path(out) as tmp:
            accelerator.unwrap_model(vae).save_pretrained(tmp)


def _digit_features(captioner_file: Path, images: np.ndarray) -> torch.Tensor:
    """What the contrastive stage matches captions to: the captioner's features and the measured style."""
    gray = torch.as_tensor(images, dtype=torch.float32) / 255
    style = measure(gray.numpy())
    measured = torch.tensor(np.stack([style.thickness, style.slant, style.size], axis=1), dtype=torch.float32)
    return torch.cat([DigitClassifier.load(captioner_file).features_of(gray), measured], dim=1)


def _pretrain_text_encoder(
    cfg: BaseTrainConfig, captions: list, image_features: torch.Tensor, out: Path, accelerator: Accelerator
) -> None:
    torch.manual_seed(cfg.seed)
    text_encoder = cfg.architecture.text_encoder()

    def log(step: int, loss: float, accuracy: float) -> None:
        append_csv(out.parent / "text_loss.csv", {"step": step, "loss": loss, "batch_accuracy": accuracy})

    contrastive_pretrain(
        text_encoder, clip_tokenizer(), captions, image_features, steps=cfg.text_pretrain_steps,
        batch_size=2 * cfg.batch_size, lr=cfg.text_pretrain_lr, seed=cfg.seed,
        log=log if accelerator.is_main_process else None,
    )  # fmt: skip
    if accelerator.is_main_process:
        with atomic_path(out) as tmp:
            text_encoder.save_pretrained(tmp)
    accelerator.wait_for_everyone()


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
    accelerator: Accelerator,
    *,
    resume: bool,
    text_encoder: CLIPTextModel | None = None,
) -> Pipeline:
    torch.manual_seed(cfg.seed)
    unet = cfg.architecture.unet()
    text_encoder = text_encoder if text_encoder is not None else cfg.architecture.text_encoder()
    tokenizer = clip_tokenizer()
    noise_scheduler = DDPMScheduler.from_config(SCHEDULER_CONFIG)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    sched = get_scheduler(
        cfg.lr_scheduler, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.unet_steps
    )
    ema_unet = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True)
    ema_text = EMAModel(text_encoder.parameters(), decay=cfg.ema_decay, use_ema_warmup=True)
    unet, text_encoder, opt, sched = accelerator.prepare(unet, text_encoder, opt, sched)
    rng = RandomState(cfg.seed + accelerator.process_index)
    for obj in (ema_unet, ema_text, rng):
        accelerator.register_for_checkpointing(obj)
    checkpoints = CheckpointManager(
        run / "checkpoints", accelerator, keep=cfg.keep_checkpoints, options=run_options(cfg)
    )
    step = checkpoints.resume() if resume else 0
    if not resume and checkpoints.latest() is not None:
        raise InputError(
            f"{run} already has checkpoints; pass --resume to continue, or choose another --run-dir"
        )
    scale = vae.config.scaling_factor
    log = run / "unet_loss.csv"

    bar = tqdm(total=cfg.unet_steps, initial=step, desc="unet", disable=not accelerator.is_local_main_process)
    unet.train()
    text_encoder.train()
    while step < cfg.unet_steps:
        idx = torch.randint(len(mean), (cfg.batch_size,), generator=rng.torch)
        latents = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=rng.torch)) * scale
        texts = ["" if rng.py.random() < cfg.caption_dropout else captions[i](rng.py) for i in idx.tolist()]
        ids = tokenizer(
            texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        noise = torch.randn(latents.shape, generator=rng.torch)
        t = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=rng.torch
        )
        latents, noise, t, ids = (v.to(accelerator.device) for v in (latents, noise, t, ids))
        noisy = noise_scheduler.add_noise(latents, noise, t)
        with accelerator.autocast():
            pred = unet(noisy, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
        if cfg.snr_gamma:
            snr = compute_snr(noise_scheduler, t)
            loss = loss * torch.clamp(snr, max=cfg.snr_gamma) / snr
        loss = loss.mean()
        if not math.isfinite(loss.item()):
            raise TrainingError(
                f"the loss became {loss.item()} at step {step}; the last complete checkpoint is kept"
            )
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        ema_unet.step(accelerator.unwrap_model(unet).parameters())
        ema_text.step(accelerator.unwrap_model(text_encoder).parameters())
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if accelerator.is_main_process:
            append_csv(
                log, {"step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0], "time": time.time()}
            )
        if step % cfg.checkpoint_every == 0 or step == cfg.unet_steps:
            checkpoints.save(step)
        if step % cfg.validate_every == 0 or step == cfg.unet_steps:
            pipe = _ema_pipeline(accelerator, unet, text_encoder, ema_unet, ema_text, vae, tokenizer)
            if accelerator.is_main_process:
                _validate(pipe, run, step, accelerator, validation_prompts)
    bar.close()
    return _ema_pipeline(accelerator, unet, text_encoder, ema_unet, ema_text, vae, tokenizer)


def _ema_pipeline(accelerator, unet, text_encoder, ema_unet, ema_text, vae, tokenizer) -> Pipeline:
    """A standalone Pipeline holding copies of the EMA weights (training weights untouched)."""
    import copy

    u = copy.deepcopy(accelerator.unwrap_model(unet)).eval()
    te = copy.deepcopy(accelerator.unwrap_model(text_encoder)).eval()
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


def _validate(pipe: Pipeline, run: Path, step: int, accelerator: Accelerator, prompts: list[str]) -> None:
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
    accelerator.print(f"\nstep {step}: validation prompt accuracy {hits:.2f}")
    append_csv(run / "validation.csv", {"step": step, "prompt_accuracy": float(hits)})


def _fixed_caption(text: str) -> Callable[[random.Random], str]:
    return lambda rng: text
