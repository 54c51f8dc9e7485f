"""Resumable training: accelerate's full state, saved atomically, pruned only once the new one is whole."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from sdlab.atomic import atomic_path
from sdlab.errors import InputError, TrainingError


def on_main(accelerator: Accelerator, work: Callable[[], Any], what: str) -> None:
    """Run `work` on the main process only; if it raises, every process stops (the others raise
    `TrainingError`) instead of waiting for the main one forever."""
    error = None
    if accelerator.is_main_process:
        try:
            work()
        except Exception as err:  # shared below, then raised as it was
            error = err
    if accelerator.num_processes > 1:
        failed = accelerator.reduce(torch.tensor(float(error is not None), device=accelerator.device), "sum")
        if error is None and failed.item() > 0:
            raise TrainingError(f"the {what} failed on the main process; see its message")
    if error is not None:
        raise error


class RandomState:
    """The recipe's own random streams (batch order, captions, noise), checkpointed with the rest."""

    def __init__(self, seed: int) -> None:
        self.torch = torch.Generator().manual_seed(seed)
        self.py = random.Random(seed)

    def state_dict(self) -> dict:
        return {"torch": self.torch.get_state(), "py": self.py.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.torch.set_state(state["torch"])
        version, internal, gauss = state["py"]
        self.py.setstate((version, tuple(internal), gauss))


class Stream:
    """One torch random stream that continues from `state` (e.g. `torch.get_rng_state()`), checkpointed."""

    def __init__(self, state: torch.Tensor) -> None:
        self.generator = torch.Generator()
        self.generator.set_state(state)

    def state_dict(self) -> dict:
        return {"torch": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["torch"])


# What a resumed run may change: how long it trains, how often it saves and validates, and where.
# Every other option shapes the weights or the data stream, and must equal the checkpoint's.
FREE_ON_RESUME = frozenset(
    {"steps", "unet_steps", "resume", "output", "run_dir", "checkpoint_every", "keep_checkpoints",
     "validate_every", "log_every", "validation_prompts", "validation_prompt", "validation_steps", "allow_pickle",
     "half", "guidance_scale"}  # the last two only shape the saved model's files and sdlab.json
)  # fmt: skip
PATH_OPTIONS = frozenset({"data", "model", "class_dir"})  # compared as resolved paths, however spelled


def run_options(config: Any) -> dict[str, Any]:
    """The options of a run (a config dataclass) that a resume must repeat, as JSON values."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in FREE_ON_RESUME}
    for key in PATH_OPTIONS & fields.keys():
        if fields[key]:
            fields[key] = str(Path(fields[key]).expanduser().resolve())
    return json.loads(json.dumps(fields, default=str))


class CheckpointManager:
    """`root/step-000500/` folders, each complete (written to a temporary name, then renamed) or absent.

    Each carries the run's `options` (see `run_options`); resuming with other values is refused with a
    sentence naming the option, before anything is loaded.
    """

    def __init__(
        self, root: str | Path, accelerator: Accelerator, keep: int = 2, options: dict[str, Any] | None = None
    ) -> None:
        self.root, self.accelerator, self.keep = Path(root), accelerator, keep
        self.options = options or {}

    def all(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(
            p for p in self.root.iterdir() if p.name.startswith("step-") and (p / "step.json").exists()
        )

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None

    def save(self, step: int) -> Path:
        target = self.root / f"step-{step:06d}"
        self.accelerator.wait_for_everyone()
        record = {"step": step, "processes": self.accelerator.num_processes, "options": self.options}

        def write() -> None:
            with atomic_path(target) as tmp:
                self.accelerator.save_state(str(tmp), safe_serialization=True)
                (tmp / "step.json").write_text(json.dumps(record) + "\n")
            for old in self.all()[: -self.keep]:
                shutil.rmtree(old)

        on_main(self.accelerator, write, "checkpoint save")
        self.accelerator.wait_for_everyone()
        return target

    def resume(self, path: str | Path | None = None) -> int:
        """Load `path` (default: the latest checkpoint) and return its step."""
        ckpt = Path(path) if path else self.latest()
        if ckpt is None or not (ckpt / "step.json").exists():
            raise InputError(f"no complete checkpoint to resume from in {path or self.root}")
        step = self.check_options(ckpt)
        self.accelerator.load_state(str(ckpt))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:  # a resume from an older checkpoint: the newer ones are void
            for newer in self.all():
                if newer.name > ckpt.name:
                    shutil.rmtree(newer)
        return step

    def check_options(self, ckpt: Path) -> int:
        """The step of checkpoint `ckpt`, after checking this run's options equal those it was trained
        with; raises `InputError` naming the first option that differs."""
        record = json.loads((ckpt / "step.json").read_text())
        processes = record.get("processes")
        world = self.accelerator.num_processes if self.accelerator is not None else None
        if processes is not None and world is not None and processes != world:
            raise InputError(
                f"the checkpoint {ckpt} was saved by {processes} process(es) and this run has {world}; "
                f"resume with accelerate launch --num_processes {processes}"
            )
        saved = record.get("options")
        if saved is None:  # written before checkpoints recorded their options
            return record["step"]
        changed = [k for k in saved if k in self.options and self.options[k] != saved[k]]
        if not changed:
            return record["step"]
        first = changed[0]
        if first == "architecture":  # not a flag: train-base's --preset chooses it
            raise InputError(
                f"the architecture differs from the one the checkpoint {ckpt} was trained with; "
                "resume with the same --preset"
            )
        flag = "--" + first.replace("_", "-")
        more = (
            f" (also changed: {', '.join('--' + k.replace('_', '-') for k in changed[1:])})"
            if changed[1:]
            else ""
        )
        raise InputError(
            f"{flag} is {self.options[first]!r}, but the checkpoint {ckpt} was trained with {flag} "
            f"{saved[first]!r}{more}; resume with the same value, or start a new run in another folder"
        )
