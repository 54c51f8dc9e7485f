"""Each recipe's options are described once, in its config dataclass; the CLI is generated from it."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from sdlab.cli.main import build_parser
from sdlab.options import _base_type, from_namespace
from sdlab.training import RECIPES


def parse(command: str, *argv: str):
    args = [command, "DATA", "-o", "OUT", *argv]
    return build_parser(args).parse_args(args)


def another_value(name: str, kind, default, choices) -> tuple[object, list[str]]:
    """A value unlike the default, and the flags that set it."""
    flag = "--" + name.replace("_", "-")
    if kind is bool:
        return (not default), [flag if not default else "--no-" + name.replace("_", "-")]
    if choices:
        value = next(c for c in choices if c != default)
        return value, [flag, value]
    if typing.get_origin(kind) is list:
        return ["a cat", "a dog"], [flag, "a cat|a dog"]
    if kind is int:
        return 7, [flag, "7"]
    if kind is float:
        return 0.125, [flag, "0.125"]
    return "something", [flag, "something"]


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.command for r in RECIPES])
def test_cli_defaults_are_the_dataclass_defaults_and_every_field_is_a_flag(recipe):
    config_cls, _ = recipe.load()
    assert from_namespace(config_cls, parse(recipe.command)) == config_cls(data="DATA", output="OUT")
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.name in ("data", "output"):
            continue
        default = config_cls(data="DATA", output="OUT").__dict__[f.name]
        value, argv = another_value(f.name, _base_type(hints[f.name]), default, f.metadata.get("choices"))
        assert getattr(from_namespace(config_cls, parse(recipe.command, *argv)), f.name) == value, f.name


def test_diffusers_example_flags_are_accepted():
    from sdlab.training.lora import LoraTrainConfig

    argv = ["lora", "DATA", "--output-dir", "OUT", "--max-train-steps", "9", "--train-batch-size", "2",
            "--learning-rate", "0.5", "--resolution", "64", "--resume-from-checkpoint", "latest",
            "--pretrained-model-name-or-path", "m", "--checkpointing-steps", "3", "--lr-warmup-steps", "4"]  # fmt: skip
    args = build_parser(argv).parse_args(argv)
    cfg = from_namespace(LoraTrainConfig, args)
    assert (cfg.output, cfg.steps, cfg.batch_size, cfg.learning_rate, cfg.resolution, cfg.resume) == (
        "OUT",
        9,
        2,
        0.5,
        64,
        "latest",
    )
    assert (cfg.model, cfg.checkpoint_every, cfg.warmup_steps) == ("m", 3, 4)


def test_the_learning_rates_the_demos_measured_are_the_defaults_everywhere():
    """The shell and Python used to disagree (LoRA 1e-3 vs 1e-4, ...): the measured CLI values won."""
    from sdlab.training.dreambooth import DreamBoothConfig
    from sdlab.training.finetune import FinetuneConfig
    from sdlab.training.lora import LoraTrainConfig
    from sdlab.training.textual_inversion import TextualInversionConfig

    rates = [
        c(data="d", output="o").learning_rate
        for c in (FinetuneConfig, LoraTrainConfig, TextualInversionConfig, DreamBoothConfig)
    ]
    assert rates == [1e-4, 1e-3, 5e-3, 5e-5]
