"""`sdlab distill`: latent consistency distillation (Luo et al. 2023, "Latent Consistency Models").

A student UNet learns to jump from any noisy latent straight to the clean one that the teacher's
guided sampling would reach, so 2-4 steps of `LCMScheduler` replace the teacher's 20-50 guided steps.
The guidance is distilled too: the student takes the guidance weight w as an embedding
(`time_cond_proj_dim`), so one UNet pass per step replaces classifier-free guidance's two.

The recipe follows diffusers' `examples/consistency_distillation/train_lcm_distill_sd_wds.py`:

- the student is the teacher's UNet with a guidance-embedding projection added (zero-initialised here,
  so the student starts as the teacher; diffusers' example leaves it random), the target network an EMA
  of the student (`ema_decay`);
- each step takes a training latent, noises it to a timestep t_{n+k} of a DDIM skipping schedule
  (`num_ddim_timesteps`), draws w in [w_min, w_max], and asks the teacher with classifier-free guidance
  at weight w (x0 = cond + w (cond - uncond), i.e. guidance scale w + 1) for one DDIM step to t_n; the
  teacher guides only where sigma(t_{n+k}) lies in `guidance_interval` (Kynkaanniemi et al. 2024), by
  default the interval it recommends for its own sampling, so the student learns the sampler the
  teacher is best at (an sdlab addition: diffusers' example guides everywhere);
- the loss is the distance (pseudo-Huber, c = `huber_c`, or L2) between the student's consistency
  function at t_{n+k} and the target network's at the teacher's t_n, both with the boundary-condition
  scalings c_skip, c_out (sigma_data 0.5, timestep scaling 10, as `LCMScheduler`).

The result is a complete model folder (the teacher's VAE, text encoder and tokenizer, the target
network as its UNet, `LCMScheduler`) whose `sdlab.json` recommends 4 LCM steps at the guidance scale
`(w_min + w_max) / 2 + 1`; `sdlab generate --model OUT/model` uses it as any model.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, LCMScheduler, UNet2DConditionModel

from sdlab.digits.classifier import DigitClassifier
from sdlab.digits.data import to_gray
from sdlab.errors import InputError
from sdlab.images import make_grid, save_png
from sdlab.loading.folder import save_folder
from sdlab.options import option
from sdlab.pipeline import Pipeline
from sdlab.sampling.latents import guidance_scale_embedding, predicted_x0
from sdlab.sampling.params import EVERY_STEP, SamplingParams, check_guidance_interval, parse_guidance_interval
from sdlab.training.data import CaptionTokens, encode_dataset, encode_text
from sdlab.training.loop import TrainLoop, append_csv, truncate_csv
from sdlab.training.teacher import TeacherConfig, load_teacher, training_images

SIGMA_DATA = 0.5  # LCMScheduler's boundary-condition constants
TIMESTEP_SCALING = 10.0


@dataclass
class LCMDistillConfig(TeacherConfig):
    w_min: float = option(1.0, "lowest guidance weight w distilled (guidance scale w + 1)")
    w_max: float = option(4.0, "highest guidance weight w distilled")
    guidance_interval: str | None = option(
        None,
        "LO,HI: the teacher guides only at noise levels sigma in (LO, HI], as it would sample; 'all': every step "
        "(default: the teacher's recommended interval from its sdlab.json, else all)",
        metavar="LO,HI",
    )
    num_ddim_timesteps: int = option(
        50, "DDIM solver steps over the 1,000 training timesteps (skip k = 1000/N)"
    )
    time_cond_proj_dim: int = option(256, "width of the student's guidance-scale embedding (diffusers: 256)")
    ema_decay: float = option(0.95, "EMA decay of the target network (LCM: 0.95)")
    loss_type: str = option("huber", "huber (pseudo-Huber, as LCM) or l2", choices=["huber", "l2"])
    huber_c: float = option(0.001, "the pseudo-Huber loss's c")
    validation_steps: int = option(4, "LCM steps of the validation grids")
    steps: int = option(2000, "optimizer steps", "--max-train-steps")
    batch_size: int = option(64, "global batch size per optimizer step", "--train-batch-size")
    learning_rate: float = option(
        1e-4, "the optimizer's learning rate (diffusers' LCM example: 1e-4)", "--lr"
    )
    checkpoint_every: int = option(500, "save a resumable checkpoint every N steps", "--checkpointing-steps")

    def check(self) -> None:
        super().check()
        if not (0 <= self.w_min <= self.w_max and math.isfinite(self.w_max)):
            raise InputError(
                f"--w-min and --w-max need 0 <= w_min <= w_max < inf, got {self.w_min} and {self.w_max}"
            )
        for name, least in (("num_ddim_timesteps", 4), ("time_cond_proj_dim", 4), ("validation_steps", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < least:
                raise InputError(
                    f"--{name.replace('_', '-')} must be an integer of at least {least}, got {value!r}"
                )
        if self.validation_steps > self.num_ddim_timesteps:
            raise InputError(
                f"--validation-steps {self.validation_steps} exceeds the {self.num_ddim_timesteps} timesteps "
                "the model is distilled on (--num-ddim-timesteps)"
            )
        parse_guidance_interval(self.guidance_interval)  # one sentence for a bad one, before anything loads
        if not 0 <= self.ema_decay < 1:
            raise InputError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if not 0 < self.huber_c < math.inf:
            raise InputError(f"--huber-c must be a positive number, got {self.huber_c}")

    @property
    def guidance_scale(self) -> float:
        """The guidance scale the result recommends: the middle of the distilled range, w + 1."""
        return (self.w_min + self.w_max) / 2 + 1


class DDIMSolver:
    """DDIM's deterministic step on a skipping schedule of `ddim_timesteps` of the training timesteps
    (diffusers' LCM example): timesteps k, 2k, ..., T (minus one), with x_{t_n} from (x0, eps) at t_{n+k}."""

    def __init__(self, alphas_cumprod: torch.Tensor, ddim_timesteps: int) -> None:
        train = len(alphas_cumprod)
        if not 1 <= ddim_timesteps <= train:
            raise InputError(f"--num-ddim-timesteps must be between 1 and {train}, got {ddim_timesteps}")
        self.k = train // ddim_timesteps
        self.timesteps = torch.from_numpy(np.arange(1, ddim_timesteps + 1) * self.k - 1)  # (N,) int64
        prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[self.timesteps[:-1]]])
        self.alphas_cumprod_prev = prev.float()  # alpha-bar at t_n, for a step from t_{n+k}

    def step(self, x0: torch.Tensor, eps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod_prev.to(x0.device)[index].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c_skip(t), c_out(t) (each (B, 1, 1, 1)): the consistency function f = c_skip x_t + c_out x0 is x_t at
    t = 0 (LCM, as `LCMScheduler.get_scalings_for_boundary_condition_discrete`)."""
    scaled = t.float() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


def x0_and_eps(
    output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) implied by a UNet `output` at x_t, for epsilon or v-prediction; `alpha_bar` (B, 1, 1, 1).
    x0 is the sampling loop's `predicted_x0`; eps is the output itself, or sqrt(a) v + sqrt(1 - a) x_t."""
    if prediction_type not in ("epsilon", "v_prediction"):
        raise InputError(f"LCM distillation needs an epsilon or v-prediction teacher, not {prediction_type}")
    x0 = predicted_x0(output, x_t, alpha_bar, prediction_type)
    if prediction_type == "epsilon":
        return x0, output
    return x0, alpha_bar.sqrt() * output + (1 - alpha_bar).sqrt() * x_t


def student_unet(teacher: UNet2DConditionModel, time_cond_proj_dim: int) -> UNet2DConditionModel:
    """The teacher's UNet with a guidance-embedding projection (`time_embedding.cond_proj`), which starts
    at zero: before training the student computes exactly what the teacher does."""
    if teacher.config.time_cond_proj_dim is not None:
        raise InputError("the teacher is already guidance-distilled (its UNet takes a guidance embedding)")
    student = UNet2DConditionModel.from_config(teacher.config, time_cond_proj_dim=time_cond_proj_dim)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or not all(k.startswith("time_embedding.cond_proj") for k in missing):
        raise InputError(
            f"the teacher's UNet does not fit a guidance-embedding student ({(unexpected or missing)[0]})"
        )
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student.to(teacher.device)


def distill(cfg: LCMDistillConfig) -> Path:
    """Train, then write the LCM model (the target network as its UNet) as a diffusers folder at OUTPUT/model.

    Raises `InputError` for bad options, a data folder without captions, or a teacher that is already
    guidance-distilled."""
    loop = TrainLoop(cfg)
    device = loop.accelerator.device
    pipe = load_teacher(cfg, device)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler_config)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type not in ("epsilon", "v_prediction"):
        raise InputError(f"LCM distillation needs an epsilon or v-prediction teacher, not {prediction_type}")
    if pipe.is_inpainting_unet:
        raise InputError("the teacher is an inpainting model (9-channel UNet); distil its text-to-image base")
    pixels, captions = training_images(cfg, pipe, captions=True)
    mean, std = encode_dataset(pipe.vae, pixels)
    del pixels  # only the latents' moments are needed from here on
    scale, shift = pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor or 0.0
    interval = (
        parse_guidance_interval(cfg.guidance_interval) or pipe.recommended.guidance_interval or EVERY_STEP
    )
    lo, hi = check_guidance_interval(interval)
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
    solver = DDIMSolver(noise_scheduler.alphas_cumprod, cfg.num_ddim_timesteps)
    teacher = pipe.unet
    student = student_unet(teacher, cfg.time_cond_proj_dim).train().requires_grad_(True)
    target = copy.deepcopy(student).eval().requires_grad_(False)
    (unet,) = loop.prepare(student, params=list(student.parameters()), weight_decay=1e-2)
    loop.register(_Target(target))
    tokens = CaptionTokens(pipe.tokenizer)
    uncond = encode_text(tokens, pipe.text_encoder, [""])  # (1, L, D)
    rng = loop.rng

    def draw(step: int) -> dict[str, torch.Tensor | list[str]]:
        idx = torch.randint(len(mean), (cfg.batch_size,), generator=rng.torch)
        latents = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=rng.torch) - shift) * scale
        return {
            "latents": latents,
            "captions": [captions[i](rng.py) for i in idx.tolist()],
            "noise": torch.randn(latents.shape, generator=rng.torch),
            "index": torch.randint(cfg.num_ddim_timesteps, (cfg.batch_size,), generator=rng.torch),
            "w": cfg.w_min + (cfg.w_max - cfg.w_min) * torch.rand(cfg.batch_size, generator=rng.torch),
        }

    def loss(batch: dict, rows: slice) -> torch.Tensor:
        latents, noise, index, w = (batch[k][rows].to(device) for k in ("latents", "noise", "index", "w"))
        embeds = encode_text(tokens, pipe.text_encoder, batch["captions"][rows])
        start = solver.timesteps.to(device)[index]  # t_{n+k}
        end = (start - solver.k).clamp(min=0)  # t_n
        x_start = noise_scheduler.add_noise(latents, noise, start)
        w_embedding = guidance_scale_embedding(w, cfg.time_cond_proj_dim).to(device)
        a_start = alphas_cumprod[start].view(-1, 1, 1, 1)
        a_end = alphas_cumprod[end].view(-1, 1, 1, 1)

        # the student's consistency function at t_{n+k}
        out = unet(x_start, start, encoder_hidden_states=embeds, timestep_cond=w_embedding).sample
        c_skip, c_out = boundary_scalings(start)
        prediction = c_skip * x_start + c_out * x0_and_eps(out, x_start, a_start, prediction_type)[0]

        with torch.no_grad():
            # the teacher's guided DDIM step t_{n+k} -> t_n, then the target network's consistency function
            both = teacher(
                torch.cat([x_start, x_start]), torch.cat([start, start]),
                encoder_hidden_states=torch.cat([uncond.expand(len(embeds), -1, -1), embeds]),
            ).sample  # fmt: skip
            (x0_u, eps_u), (x0_c, eps_c) = (
                x0_and_eps(o, x_start, a_start, prediction_type) for o in both.chunk(2)
            )
            sigma = ((1 - a_start) / a_start).sqrt()
            ww = w.view(-1, 1, 1, 1) * ((sigma > lo) & (sigma <= hi))  # guided only in the interval
            x_end = solver.step(x0_c + ww * (x0_c - x0_u), eps_c + ww * (eps_c - eps_u), index)
            out_end = target(x_end, end, encoder_hidden_states=embeds, timestep_cond=w_embedding).sample
            c_skip_end, c_out_end = boundary_scalings(end)
            goal = c_skip_end * x_end + c_out_end * x0_and_eps(out_end, x_end, a_end, prediction_type)[0]

        if cfg.loss_type == "l2":
            return torch.nn.functional.mse_loss(prediction, goal)
        return (((prediction - goal) ** 2 + cfg.huber_c**2).sqrt() - cfg.huber_c).mean()

    def after_step() -> None:
        with torch.no_grad():  # the target network follows the student (LCM's EMA, decay 0.95)
            for t, s in zip(target.parameters(), student.parameters(), strict=True):
                t.lerp_(s.detach(), 1 - cfg.ema_decay)

    def validate(step: int) -> None:
        _validate(lcm_pipeline(pipe, target, cfg.num_ddim_timesteps), cfg, loop.out, step)

    loop.run(draw, loss, after_step=after_step, validate=validate, desc="distill")
    output = loop.out / "model"
    if loop.accelerator.is_main_process:
        save_folder(lcm_pipeline(pipe, target, cfg.num_ddim_timesteps, cfg.guidance_scale), output)
    loop.accelerator.wait_for_everyone()
    return output


class _Target:
    """The target network's weights as checkpointed state (exact resume)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


def lcm_pipeline(
    teacher: Pipeline, unet: UNet2DConditionModel, ddim_timesteps: int, guidance_scale: float | None = None
) -> Pipeline:
    """The teacher's pipeline with `unet` and `LCMScheduler` on the teacher's noise schedule, sampling the
    grid the model was distilled on (`original_inference_steps`); with `guidance_scale`, its recommended
    sampling (4 LCM steps at that scale)."""
    pipe = copy.copy(teacher)
    pipe.unet = copy.deepcopy(unet).eval()
    known = inspect.signature(LCMScheduler).parameters  # the teacher's other keys would only warn
    config = {k: v for k, v in teacher.scheduler_config.items() if k in known}
    scheduler = LCMScheduler.from_config(
        config, original_inference_steps=ddim_timesteps, timestep_scaling=TIMESTEP_SCALING
    )
    pipe.scheduler_config = dict(scheduler.config)
    # the teacher's recommendations (deep cache...) were measured on the teacher, not on this model
    pipe.recommended = SamplingParams()
    if guidance_scale is not None:
        pipe.recommended = SamplingParams(
            scheduler="lcm", num_inference_steps=4, guidance_scale=guidance_scale
        )
    return pipe


def _validate(pipe: Pipeline, cfg: LCMDistillConfig, out: Path, step: int) -> None:
    """A grid of the 10 digits (or the validation prompts), 2 seeds each, at `validation_steps` LCM steps;
    for the digits model, the share the captioner reads as the prompted digit."""
    prompts = cfg.validation_prompts or [f"a handwritten digit {d}" for d in range(10)]
    result = pipe.generate(
        prompts, scheduler="lcm", num_inference_steps=cfg.validation_steps, guidance_scale=cfg.guidance_scale,
        seed=0, num_images_per_prompt=2,
    )  # fmt: skip
    images = [result.images[2 * p + k] for k in range(2) for p in range(len(prompts))]  # a seed per row
    save_png(make_grid(images, cols=len(prompts)), out / "validation" / f"step-{step:06d}.png")
    captioner = Path(pipe.source) / "captioner.safetensors"
    if cfg.validation_prompts or not captioner.is_file():
        return
    wanted = torch.arange(10).repeat_interleave(2)
    hits = float((DigitClassifier.load(captioner).predict(to_gray(result.pixels)) == wanted).float().mean())
    print(f"\nstep {step}: prompt accuracy at {cfg.validation_steps} LCM steps {hits:.2f}")
    truncate_csv(out / "validation.csv", step - 1)  # a resumed run validates this step again
    append_csv(out / "validation.csv", {"step": step, "prompt_accuracy": hits})
