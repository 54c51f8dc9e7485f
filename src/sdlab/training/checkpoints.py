"""Resumable training: accelerate's full state, saved atomically, pruned only once the new one is whole."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator

from sdlab.errors import InputError
from sdlab.training.atomic import atomic_path


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


class CheckpointManager:
    """`root/step-000500/` folders, each complete (written to a temporary name, then renamed) or absent."""

    def __init__(self, root: str | Path, accelerator: Accelerator, keep: int = 2) -> None:
        self.root, self.accelerator, self.keep = Path(root), accelerator, keep

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
        if self.accelerator.is_main_process:
            with atomic_path(target) as tmp:
                self.accelerator.save_state(str(tmp), safe_serialization=True)
                (tmp / "step.json").write_text(json.dumps({"step": step}) + "\n")
            for old in self.all()[: -self.keep]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return target

    def resume(self, path: str | Path | None = None) -> int:
        """Load `path` (default: the latest checkpoint) and return its step."""
        ckpt = Path(path) if path else self.latest()
        if ckpt is None or not (ckpt / "step.json").exists():
            raise InputError(f"no complete checkpoint to resume from in {path or self.root}")
        self.accelerator.load_state(str(ckpt))
        return json.loads((ckpt / "step.json").read_text())["step"]
