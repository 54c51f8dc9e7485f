"""The `sdlab` command: subcommands, and one sentence (never a traceback) for bad input."""

from __future__ import annotations

import argparse
import sys

from sdlab.cli.options import (
    CaptionOptions,
    ConvertOptions,
    EvalOptions,
    GenerateOptions,
    InfoOptions,
    ReplayOptions,
    ServeOptions,
    TrainBaseOptions,
    add_options,
    from_namespace,
)
from sdlab.errors import InputError, TrainingError
from sdlab.training import RECIPES
from sdlab.version import __version__


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the whole usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from sdlab.cli.evaluate import run_eval
    from sdlab.cli.generate import run_generate, run_replay
    from sdlab.cli.info import run_convert, run_info
    from sdlab.cli.serve import run_serve
    from sdlab.cli.teach import run_caption, run_recipe
    from sdlab.cli.train import run_train_base

    parser = _Parser(
        prog="sdlab", description="Stable Diffusion end to end: generate, train and measure, offline."
    )
    parser.add_argument("--version", action="version", version=f"sdlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands = [
        ("generate", GenerateOptions, run_generate, "text-to-image, image-to-image and inpainting"),
        ("replay", ReplayOptions, run_replay, "regenerate an image from the recipe stored in its PNG"),
        ("info", InfoOptions, run_info, "describe a model: components, sizes, scheduler, resolution"),
        (
            "eval",
            EvalOptions,
            run_eval,
            "measure a digits model: accuracy, FID, diversity, negative prompts, strength",
        ),
        ("train-base", TrainBaseOptions, run_train_base, "train the digits Stable Diffusion from scratch"),
        (
            "caption",
            CaptionOptions,
            run_caption,
            "caption a folder of images (metadata.jsonl, .txt sidecars)",
        ),
        ("serve", ServeOptions, run_serve, "the web UI and AUTOMATIC1111's HTTP API, on 127.0.0.1:7860"),
        (
            "convert",
            ConvertOptions,
            run_convert,
            "save a model as a single .safetensors file or a diffusers folder",
        ),
    ]
    for recipe in RECIPES:  # the teaching recipes: flags generated from each one's config dataclass
        config, train = recipe.load()
        commands.append((recipe.command, config, run_recipe(train), recipe.help))
    for name, options, run, help in commands:
        p = sub.add_parser(name, help=help, description=help)
        add_options(p, options)
        p.set_defaults(run=run, options=options)
    return parser


def _quiet_libraries() -> None:
    """The CLI speaks for itself: no library progress bars or info logs while loading weights."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        args.run(from_namespace(args.options, args))
    except InputError as err:
        print(f"sdlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"sdlab {args.command}: stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sdlab {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
