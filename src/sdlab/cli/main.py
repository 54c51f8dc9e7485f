"""The `sdlab` command: subcommands, and one sentence (never a traceback) for bad input."""

from __future__ import annotations

import argparse
import importlib
import sys

from sdlab.cli.options import (
    CaptionOptions,
    ConvertOptions,
    EvalOptions,
    GenerateOptions,
    InfoOptions,
    MakeDigitsOptions,
    ReplayOptions,
    ServeOptions,
    add_options,
    from_namespace,
)
from sdlab.errors import InputError, TrainingError
from sdlab.training import RECIPES
from sdlab.version import __version__


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the whole usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# command, its options, "module:function" that runs it (imported only when it runs), help
COMMANDS = [
    ("generate", GenerateOptions, "sdlab.cli.generate:run_generate", "text-to-image, image-to-image and inpainting"),
    ("replay", ReplayOptions, "sdlab.cli.generate:run_replay", "regenerate an image from the recipe stored in its PNG"),
    ("info", InfoOptions, "sdlab.cli.info:run_info", "describe a model: components, sizes, scheduler, resolution"),
    ("eval", EvalOptions, "sdlab.cli.evaluate:run_eval",
     "measure a digits model: accuracy, FID, diversity, negative prompts, strength"),
    ("make-digits", MakeDigitsOptions, "sdlab.cli.teach:run_make_digits",
     "write a captioned folder of training digits (plain, underlined, italic, wide or tiny) to teach with"),
    ("caption", CaptionOptions, "sdlab.cli.teach:run_caption", "caption a folder of images (metadata.jsonl, .txt sidecars)"),
    ("serve", ServeOptions, "sdlab.cli.serve:run_serve", "the web UI and AUTOMATIC1111's HTTP API, on 127.0.0.1:7860"),
    ("convert", ConvertOptions, "sdlab.cli.info:run_convert",
     "save a model as a single .safetensors file or a diffusers folder"),
]  # fmt: skip


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `sdlab` parser. Importing it costs no torch: commands' code loads when a command runs, and
    a training recipe's flags (its config lives beside its torch code) only when `argv` names it."""
    parser = _Parser(
        prog="sdlab", description="Stable Diffusion end to end: generate, train and measure, offline."
    )
    parser.add_argument("--version", action="version", version=f"sdlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, options, target, help in COMMANDS:
        p = sub.add_parser(name, help=help, description=help)
        add_options(p, options)
        p.set_defaults(run=_lazy(target), options=options)
    wanted = set(sys.argv[1:] if argv is None else argv)
    for recipe in RECIPES:  # the teaching recipes: flags generated from each one's config dataclass
        p = sub.add_parser(recipe.command, help=recipe.help, description=recipe.help)
        if recipe.command in wanted:
            config, train = recipe.load()
            presets = recipe.load_presets()
            add_options(p, config, presets)
            p.set_defaults(run=_run_recipe(train), options=config, presets=presets)
    return parser


def _lazy(target: str):
    def run(options):
        module, _, function = target.partition(":")
        return getattr(importlib.import_module(module), function)(options)

    return run


def _run_recipe(train):
    def run(config):
        from sdlab.cli.teach import run_recipe

        return run_recipe(train)(config)

    return run


def _quiet_libraries() -> None:
    """The CLI speaks for itself: no library progress bars or info logs while loading weights."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser(argv).parse_args(argv)
    except SystemExit as done:  # --help, --version, or a bad flag (argparse printed one line): its exit code
        return done.code if isinstance(done.code, int) else 2
    _quiet_libraries()
    try:
        args.run(from_namespace(args.options, args, getattr(args, "presets", None)))
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
