"""The one accelerate training loop every stage and recipe runs on: the digits model's VAE, text encoder
and UNet stages, fine-tuning, textual inversion, DreamBooth and LoRA.

A recipe prepares its modules through `TrainLoop.prepare` and hands `run` two functions: `draw(step)`,
which draws the step's *global* batch from the loop's seeded stream (`loop.rng`), and `loss(batch, rows)`,
the mean loss of some rows of it. Everything else lives here: the optimizer (`--optimizer`), the learning
rate schedule, gradient accumulation and clipping, resuming (weights, optimizer, schedule, random streams,
step), atomic checkpoints, a loss log, a progress bar with loss and ETA, validation every N steps, and
stopping every process on a non-finite loss with the last complete checkpoint kept.

Several processes (`accelerate launch --num_processes N`) split one global batch: every process draws
the same global batch from the same seeded stream and computes the loss of its share, and accelerate
averages the gradients, so N processes take the same steps as one process on the whole batch. Gradient
accumulation splits each process's share again into micro-batches, one backward pass each: less memory,
the same step.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib
import math
import time
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers.optimization import SchedulerType, get_scheduler
from tqdm.auto import tqdm

from sdlab.errors import InputError, TrainingError
from sdlab.options import option
from sdlab.training.checkpoints import CheckpointManager, RandomState, on_main, run_options

# name -> the package that provides it. AdamW is the default. 8-bit Adam is left out: bitsandbytes runs on
# the CPU, but once installed diffusers and peft import it at start-up (+0.7 s to every sdlab command, and
# a warning), and on a CPU the optimizer's memory is rarely the limit; Adafactor saves that memory instead.
OPTIMIZERS = {
    "adamw": "torch",  # AdamW (Loshchilov & Hutter 2019)
    "adafactor": "torch",  # Adafactor (Shazeer & Stern 2018): factored second moments, little optimizer memory
    "prodigy": "prodigyopt",  # Prodigy (Mishchenko & Defazio 2024): estimates its own step size; use --lr 1
}


@dataclass
class TrainConfig:
    """What every training run takes. Each field is a CLI flag (`sdlab.options`); the aliases are the
    names diffusers' training examples use, so their users find their flags."""

    output: str = option(
        MISSING, "run folder: checkpoints/, loss.csv, validation/ and the result", "-o", "--output-dir",
        metavar="DIR", required=True,
    )  # fmt: skip
    steps: int = option(500, "optimizer steps", "--max-train-steps")
    batch_size: int = option(
        8, "global batch size per optimizer step (split across processes)", "--train-batch-size"
    )
    learning_rate: float = option(1e-4, "the optimizer's learning rate", "--lr")
    lr_scheduler: str = option("constant", "constant, cosine, linear, constant_with_warmup, ... (diffusers')")
    warmup_steps: int = option(0, "learning-rate warm-up steps", "--lr-warmup-steps")
    optimizer: str = option(
        "adamw", "adamw, adafactor (torch's, little optimizer memory) or prodigy (prodigyopt, sdlab[optimizers]; "
        "learns its step size: use --lr 1)",
        choices=list(OPTIMIZERS),
    )  # fmt: skip
    gradient_accumulation_steps: int = option(
        1, "split each process's share of the batch into N micro-batches, one backward pass each: less "
        "memory, the same optimizer step",
    )  # fmt: skip
    max_grad_norm: float = option(1.0, "clip the gradient norm to this (0: no clipping)")
    seed: int = option(0, "seed of the batch order, noise and timesteps")
    checkpoint_every: int = option(100, "save a resumable checkpoint every N steps", "--checkpointing-steps")
    keep_checkpoints: int = option(2, "complete checkpoints to keep", "--checkpoints-total-limit")
    validate_every: int = option(0, "save a validation grid every N steps (0: at the end only)")
    log_every: int = option(
        10, "write loss.csv and check the loss every N steps: the device is waited for once per N steps, and a "
        "NaN stops the run within N steps (always before a checkpoint is written)",
    )  # fmt: skip
    validation_prompts: list[str] = option(
        MISSING, 'validation prompts: several values, or one with "|" between prompts', "--validation-prompt",
        default_factory=list,
    )  # fmt: skip
    mixed_precision: str = option("no", "no, fp16 or bf16 (accelerate's mixed precision)")
    resume: str | None = option(
        None,
        "latest, or a checkpoint folder to continue from",
        "--resume-from-checkpoint",
        metavar="latest|PATH",
    )

    def check(self) -> None:
        """Raise `InputError` naming the first option out of range, before anything is loaded."""
        for name in (
            "steps",
            "batch_size",
            "checkpoint_every",
            "gradient_accumulation_steps",
            "keep_checkpoints",
            "log_every",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise InputError(f"--learning-rate must be a positive number, got {self.learning_rate}")
        if not (self.max_grad_norm >= 0 and math.isfinite(self.max_grad_norm)):
            raise InputError(f"--max-grad-norm must be 0 (no clipping) or positive, got {self.max_grad_norm}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        check_optimizer_installed(self.optimizer)
        schedules = [s.value for s in SchedulerType]
        if self.lr_scheduler not in schedules:
            raise InputError(
                f"--lr-scheduler must be one of {', '.join(schedules)}, got {self.lr_scheduler!r}"
            )
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise InputError(f"--mixed-precision must be no, fp16 or bf16, got {self.mixed_precision!r}")


def make_optimizer(
    name: str, params: list[torch.nn.Parameter], lr: float, **kwargs: Any
) -> torch.optim.Optimizer:
    """The optimizer called `name` (see `OPTIMIZERS`) over `params`; `kwargs` such as weight_decay pass on.

    Raises `InputError` naming the package to install when the optimizer's library is missing."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, **kwargs)
    if name == "adafactor":
        return torch.optim.Adafactor(params, lr=lr, weight_decay=kwargs.get("weight_decay", 0.0))
    check_optimizer_installed(name)
    import prodigyopt

    return prodigyopt.Prodigy(params, lr=lr, **kwargs)


def check_optimizer_installed(name: str) -> None:
    """Raise `InputError` naming the package to install when optimizer `name`'s library is missing."""
    package = OPTIMIZERS[name]
    if package == "torch":
        return
    try:
        importlib.import_module(package)
    except ImportError:
        raise InputError(
            f"--optimizer {name} needs the {package} package: pip install 'sdlab[optimizers]'"
        ) from None


class TrainLoop:
    """One training run in `cfg.output`. `options` is what a resume must repeat (default: `run_options(cfg)`;
    a multi-stage recipe passes its own, whole config)."""

    def __init__(
        self, cfg: TrainConfig, accelerator: Accelerator | None = None, options: dict[str, Any] | None = None
    ) -> None:
        cfg.check()
        self.cfg = cfg
        self.out = Path(cfg.output)
        self.accelerator = accelerator or make_accelerator(cfg.mixed_precision)
        world = self.accelerator.num_processes
        if cfg.batch_size % (world * cfg.gradient_accumulation_steps):
            raise InputError(
                f"--batch-size {cfg.batch_size} must be divisible by the {world} processes times "
                f"--gradient-accumulation-steps {cfg.gradient_accumulation_steps}"
            )
        self.rng = RandomState(cfg.seed)  # the same stream on every process: one global batch
        self.checkpoints = CheckpointManager(
            self.out / "checkpoints", self.accelerator, cfg.keep_checkpoints, options or run_options(cfg)
        )
        self.step = 0
        self._params: list[torch.nn.Parameter] = []
        self._modules: list[torch.nn.Module] = []
        self._resume_target = self._check_resume(cfg.resume)

    # -- setup -------------------------------------------------------------------------------------

    def prepare(
        self,
        *modules: torch.nn.Module,
        params: list[torch.nn.Parameter],
        lr_schedule: Callable[[torch.optim.Optimizer], Any] | None = None,
        **optimizer_kwargs: Any,
    ) -> list[torch.nn.Module]:
        """Wrap `modules` for the accelerator and build the configured optimizer over `params` (extra
        keywords such as weight_decay go to it) with the configured learning-rate schedule, or
        `lr_schedule(optimizer)` when a stage brings its own.

        Returns the prepared modules as a list, in order. Call `register` for extra state (EMA) before `run`.
        """
        self._params = params
        opt = make_optimizer(self.cfg.optimizer, params, self.cfg.learning_rate, **optimizer_kwargs)
        if lr_schedule is not None:
            sched = lr_schedule(opt)
        else:
            sched = get_scheduler(
                self.cfg.lr_scheduler,
                opt,
                num_warmup_steps=self.cfg.warmup_steps,
                num_training_steps=self.cfg.steps,
            )
        prepared = self.accelerator.prepare(*modules, opt, sched)
        *wrapped, self.optimizer, self.lr_schedule = prepared
        self._modules = wrapped
        self.accelerator.register_for_checkpointing(self.rng)
        return wrapped

    def register(self, *objects: Any) -> None:
        """Extra state saved in every checkpoint (objects with state_dict/load_state_dict, e.g. EMAModel)."""
        for obj in objects:
            self.accelerator.register_for_checkpointing(obj)
            self._on_device(obj)

    def share(self, global_batch: int | None = None) -> slice:
        """This process's rows of the global batch."""
        n = (global_batch or self.cfg.batch_size) // self.accelerator.num_processes
        return slice(self.accelerator.process_index * n, (self.accelerator.process_index + 1) * n)

    def micro_batches(self) -> list[slice]:
        """This process's rows, in `gradient_accumulation_steps` equal micro-batches."""
        share, parts = self.share(), self.cfg.gradient_accumulation_steps
        n = (share.stop - share.start) // parts
        return [slice(share.start + k * n, share.start + (k + 1) * n) for k in range(parts)]

    # -- the loop ----------------------------------------------------------------------------------

    def run(
        self,
        draw: Callable[[int], Any],
        loss: Callable[[Any, slice], torch.Tensor],
        *,
        split: bool = True,
        after_step: Callable[[], None] | None = None,
        validate: Callable[[int], None] | None = None,
        metrics: Callable[[], dict[str, float]] | None = None,
        desc: str = "train",
    ) -> None:
        """Train until `cfg.steps`.

        Each step: `batch = draw(step)` (the global batch, from `self.rng`), then `loss(batch, rows)` for
        each of this process's micro-batches (the mean loss of those rows, a scalar tensor). With
        `split=False` every process takes the whole batch in one pass (a loss that compares the rows
        with each other, such as the contrastive one). `metrics()` adds columns to loss.csv.
        """
        cfg, acc = self.cfg, self.accelerator
        if self._resume_target is not None:
            self.step = self.checkpoints.resume(self._resume_target)
            for obj in self.accelerator._custom_objects:  # loaded on the CPU (EMA copies)
                self._on_device(obj)
            if acc.is_main_process:
                truncate_csv(self.out / "loss.csv", self.step)  # rows after the checkpoint are redone
        elif self.checkpoints.latest() is not None:
            raise InputError(
                f"{self.out} already has checkpoints; pass --resume latest to continue, or choose another --output"
            )
        elif acc.is_main_process:
            truncate_csv(self.out / "loss.csv", 0)  # rows of an attempt killed before its first checkpoint
        parts = self.micro_batches() if split else [slice(None)]
        bar = tqdm(total=cfg.steps, initial=self.step, desc=desc, disable=not acc.is_local_main_process)
        pending: list[dict[str, Any]] = []  # steps not yet logged: their losses still on the device
        with _fixed_shapes(acc.device):
            while self.step < cfg.steps:
                batch = _to_device(draw(self.step), acc.device)  # copied while the last step still runs
                losses = []
                for k, rows in enumerate(parts):
                    with self._no_sync(last=k == len(parts) - 1):
                        value = loss(batch, rows)
                        acc.backward(value / len(parts) if len(parts) > 1 else value)
                    losses.append(value.detach().float())
                # the mean over every process: a NaN anywhere stops every process at the same step
                step_loss = acc.reduce(torch.stack(losses).mean(), reduction="mean")
                if cfg.max_grad_norm:
                    acc.clip_grad_norm_(self._params, cfg.max_grad_norm)
                self.optimizer.step()
                if not self.optimizer.step_was_skipped:  # fp16: the scaler skips steps with inf gradients
                    self.lr_schedule.step()
                self.optimizer.zero_grad(set_to_none=True)
                if after_step is not None:
                    after_step()
                self.step += 1
                bar.update(1)
                pending.append({"step": self.step, "loss": step_loss, "lr": self.lr_schedule.get_last_lr()[0],
                                **(metrics() if metrics else {}), "time": time.time()})  # fmt: skip
                saving = self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps
                validating = validate is not None and (
                    (cfg.validate_every and self.step % cfg.validate_every == 0) or self.step == cfg.steps
                )
                if saving or validating or self.step % cfg.log_every == 0:
                    self._log(pending, bar)  # raises `TrainingError` on a NaN, before anything is saved
                    pending = []
                if saving:
                    self.checkpoints.save(self.step)
                if validating:
                    on_main(acc, lambda: validate(self.step), "validation")
        bar.close()
        acc.wait_for_everyone()

    def _log(self, pending: list[dict[str, Any]], bar: tqdm) -> None:
        """The logged steps' losses and metrics as numbers (one wait for the device), appended to loss.csv;
        `TrainingError` naming the first step whose loss is not finite and the last complete checkpoint."""
        rows = []
        for row in pending:
            row = {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in row.items()}
            if not math.isfinite(row["loss"]):
                self._write(rows)
                last = self.checkpoints.latest()
                kept = (
                    f"the last complete checkpoint, {last}, is kept"
                    if last
                    else "no checkpoint was written yet"
                )
                raise TrainingError(f"the loss became {row['loss']} at step {row['step']}; {kept}")
            rows.append(row)
        self._write(rows)
        if rows:
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}")

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if rows and self.accelerator.is_main_process:
            append_csv(self.out / "loss.csv", rows)

    def _on_device(self, obj: Any) -> None:
        if hasattr(obj, "to") and not isinstance(obj, torch.nn.Module):
            obj.to(self.accelerator.device)

    def _no_sync(self, last: bool):
        """No gradient all-reduce before a process's last micro-batch: accumulate locally, sync once."""
        stack = contextlib.ExitStack()
        if not last and self.accelerator.num_processes > 1:
            for module in self._modules:
                stack.enter_context(self.accelerator.no_sync(module))
        return stack

    def _check_resume(self, resume: str | None) -> str | None:
        if resume is None:
            return None
        if resume == "latest":
            latest = self.checkpoints.latest()
            if latest is None:
                raise InputError(f"--resume latest: {self.out / 'checkpoints'} holds no complete checkpoint")
            target = latest
        else:
            target = Path(resume)
            if not (target / "step.json").is_file():
                raise InputError(f"--resume {resume}: not a complete sdlab checkpoint folder (no step.json)")
        # before any model is built: a resume with other options must fail at once, in one sentence
        self.checkpoints.check_options(target)
        return str(target)


def _to_device(batch: Any, device: torch.device) -> Any:
    """`batch` with every tensor in it (in tuples, lists, dicts and dataclasses) on `device`, copied without
    waiting where the source is pinned; the loss functions' own `.to(device)` then cost nothing."""
    if device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple | list):
        return type(batch)(_to_device(x, device) for x in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: _to_device(getattr(batch, f.name), device)
                                             for f in dataclasses.fields(batch)})  # fmt: skip
    return batch


@contextlib.contextmanager
def _fixed_shapes(device: torch.device):
    """cuDNN's autotuner for the training steps, whose shapes never change (restored afterwards)."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda" or previous
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def make_accelerator(mixed_precision: str = "no") -> Accelerator:
    """An Accelerator that also runs several CPU processes (gloo) when the machine has no GPU.

    accelerate only picks its multi-CPU mode when told the run is CPU-only, so say so where no
    accelerator device exists: `accelerate launch --multi_gpu --num_processes 2` then trains on 2 CPU
    processes, and the same command uses the GPUs where there are some.
    """
    has_device = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    has_device = has_device or torch.backends.mps.is_available()
    # The global batch is split across processes, so one optimizer step is one schedule step (accelerate's
    # default steps the schedule once per process, for loaders whose batch grows with the process count).
    return Accelerator(
        mixed_precision=mixed_precision, cpu=not has_device, step_scheduler_with_optimizer=False
    )


def append_csv(path: Path, rows: dict | list[dict]) -> None:
    """Append one row or several (one open and write) to a CSV file, with a header when it is new."""
    rows = [rows] if isinstance(rows, dict) else rows
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)


def truncate_csv(path: Path, step: int) -> None:
    """Drop the rows logged after `step` (by a run that was interrupted before its next checkpoint)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if int(r["step"]) <= step)
