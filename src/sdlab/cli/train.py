"""`sdlab train-base`: the digits model from scratch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sdlab.cli.options import TrainBaseOptions


def run_train_base(opts: TrainBaseOptions) -> Path:
    from sdlab.training.base import PRESETS, BaseTrainConfig, train_base

    overrides = {
        k: v for k, v in dataclasses.asdict(opts).items() if v is not None and k not in ("preset", "resume")
    }
    cfg = BaseTrainConfig(**{**PRESETS[opts.preset], **overrides})
    output = train_base(cfg, resume=opts.resume)
    print(output)
    return output
