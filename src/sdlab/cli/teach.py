"""`sdlab make-digits`, `caption`, `finetune`, `lora`, `textual-inversion`, `dreambooth`: the teaching commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdlab.cli.options import CaptionOptions, MakeDigitsOptions


def run_make_digits(opts: MakeDigitsOptions) -> list[Path]:
    from sdlab.digits.folders import make_digits_folder

    paths = make_digits_folder(
        opts.folder, count=opts.count, digit=opts.digit, look=opts.look, token=opts.token,
        captions=opts.captions, seed=opts.seed,
    )  # fmt: skip
    captions = " and metadata.jsonl" if opts.captions else ""
    print(f"{len(paths)} digits ({opts.look}) written to {opts.folder}{captions}")
    return paths


def run_caption(opts: CaptionOptions) -> dict:
    from sdlab.captioning import caption_folder, describe, load_captioner

    captioner = load_captioner(opts.captioner, allow_pickle=opts.allow_pickle)
    captions = caption_folder(opts.folder, captioner, sidecars=opts.sidecars, overwrite=opts.overwrite)
    print(describe(captions))
    print(f"{len(captions)} captions written to {Path(opts.folder) / 'metadata.jsonl'}")
    return captions


def run_recipe(train: Callable[[Any], Path]) -> Callable[[Any], Path]:
    """The CLI's run function for a recipe: train on the config parsed from the flags, print the result."""

    def run(config: Any) -> Path:
        return _done(train(config))

    return run


def _done(path: Path) -> Path:
    print(path)
    return path
