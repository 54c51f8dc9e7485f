"""Each recipe's options are described once, in its config dataclass; the CLI is generated from it."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from sdlab.cli.main import build_parser
from sdlab.options import _base_type, from_namespace
from sdlab.training import RECIPES


def parse(command: str, *argv: str):
    args = [command, *([] if command == "train-base" else ["DATA", "-o", "OUT"]), *argv]
    return build_parser(args).parse_args(args)


def config_of(recipe, args):
    return from_namespace(recipe.load()[0], args, recipe.load_presets())


def defaults_of(recipe):
    config_cls, _ = recipe.load()
    if recipe.presets:  # the CLI's default preset is the first
        return config_cls(**next(iter(recipe.load_presets().values())))
    return config_cls(data="DATA", output="OUT")


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
    assert config_of(recipe, parse(recipe.command)) == defaults_of(recipe)
    hints = typing.get_type_hints(config_cls)
    options = [f for f in dataclasses.fields(config_cls) if "help" in f.metadata]
    # what is not a flag is chosen by a preset (train-base's architecture)
    assert {f.name for f in dataclasses.fields(config_cls)} - {f.name for f in options} <= {"architecture"}
    for f in options:
        if f.name in ("data", "output") and not recipe.presets:
            continue
        default = getattr(defaults_of(recipe), f.name)
        value, argv = another_value(f.name, _base_type(hints[f.name]), default, f.metadata.get("choices"))
        assert getattr(config_of(recipe, parse(recipe.command, *argv)), f.name) == value, f.name


def test_train_base_presets_are_the_python_presets_and_flags_override_them():
    from sdlab.training.base import PRESETS, BaseTrainConfig

    recipe = next(r for r in RECIPES if r.command == "train-base")
    for name, values in PRESETS.items():
        assert config_of(recipe, parse("train-base", "--preset", name)) == BaseTrainConfig(**values)
    assert BaseTrainConfig() == BaseTrainConfig(**PRESETS["full"])  # Python's default is the shipped model
    cfg = config_of(recipe, parse("train-base", "--preset", "tiny", "--unet-steps", "9", "--no-half"))
    assert cfg == BaseTrainConfig(**{**PRESETS["tiny"], "unet_steps": 9, "half": False})


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
