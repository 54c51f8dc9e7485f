"""Options described once: dataclass fields carrying their help text, from which argparse flags are made.

A command's options dataclass (`sdlab.cli.options`) or a training recipe's config (`sdlab.training`)
declares each option with `option(default, help, *aliases)`; `add_options` turns the fields into
flags (`--kebab-case` names plus the aliases), so the shell's defaults are the Python defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, field
from typing import Any

METAVARS = {int: "N", float: "X", str: "TEXT"}
PATHS = {
    "model", "config", "init_image", "mask_image", "output", "image", "embedding", "lora", "folder", "data",
    "class_dir", "run_dir",
}  # fmt: skip


def option(
    default: Any = MISSING,
    help: str = "",
    *aliases: str,
    positional: bool = False,
    default_factory: Any = MISSING,
    a1111: str | None = None,
    infotext: str | None = None,
    **argparse_kwargs: Any,
) -> Any:
    """A dataclass field with its help text (units, range) and extra flag names, e.g. `--lr`.

    `a1111` and `infotext` name the field in AUTOMATIC1111's HTTP API and in its PNG "parameters" text
    (`sdlab.sampling.params` reads them); `type` parses the flag's text where the annotation cannot."""
    meta = {"help": help, "aliases": aliases, "positional": positional, **argparse_kwargs}
    meta.update({k: v for k, v in (("a1111", a1111), ("infotext", infotext)) if v is not None})
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def same_as(cls: type, name: str) -> Any:
    """A field declared like `cls`'s field `name`: the same default, help, aliases and names, so that an
    options dataclass offering a subset of another's fields (e.g. `sdlab eval`'s sampling flags) writes
    none of them twice."""
    f = cls.__dataclass_fields__[name]
    return field(default=f.default, metadata=f.metadata)


def text_parser(cls: type, name: str) -> Any:
    """The function that reads field `name` of `cls` from text: its `type` option, else its annotation's
    base type (`int | None` -> int)."""
    f = cls.__dataclass_fields__[name]
    return f.metadata.get("type") or _base_type(typing.get_type_hints(cls)[name])


def split_bar(text: str) -> list[str]:
    """ "a|b" -> ["a", "b"]: several texts in one flag value."""
    return [part.strip() for part in text.split("|") if part.strip()]


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (a fresh one for a default_factory); None for a required field."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def add_options(parser: argparse.ArgumentParser, cls: type, presets: dict[str, dict] | None = None) -> None:
    """Add one argument per dataclass field of `cls` that was declared with `option`.

    bool fields are switches (`--x`; one that defaults to True also gets `--no-x`); list[str] fields
    take several values, or one value with "|" between texts. With `presets` (name -> field values),
    a `--preset` flag chooses one and every other flag left out takes the preset's value
    (`from_namespace` fills them in).
    """
    if presets:
        names = list(presets)
        parser.add_argument(
            "--preset", choices=names, default=names[0], metavar="NAME",
            help=f"{', '.join(names)}: the values of the flags left out (default: {names[0]})",
        )  # fmt: skip
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        meta = {k: v for k, v in f.metadata.items() if k not in ("a1111", "infotext")}
        aliases, positional = meta.pop("aliases"), meta.pop("positional")
        kind = meta.pop("type") if "type" in meta else _base_type(hints[f.name])
        default = default_of(f)
        if positional:
            parser.add_argument(f.name, type=kind, help=meta.pop("help"), **meta)
            continue
        flags = ["--" + f.name.replace("_", "-"), *aliases]
        text = meta.get("help", "")
        if presets:  # the flag is None when left out; the preset or the dataclass supplies the value
            preset_sets = any(f.name in values for values in presets.values())
            if preset_sets:
                meta["help"] = f"{text} (default: the preset's)"
            elif _shown(default) and "default" not in text:
                meta["help"] = f"{text} (default: {default})"
            default = None
        elif _shown(default) and "default" not in text:
            meta["help"] = f"{text} (default: {default})"  # what the flag is when it is left out
        if kind is bool:
            action = argparse.BooleanOptionalAction if default or presets else "store_true"
            parser.add_argument(*flags, dest=f.name, action=action, default=default, help=meta.pop("help"))
        elif typing.get_origin(kind) is list:
            parser.add_argument(
                *flags, dest=f.name, type=split_bar, nargs="+", default=default, metavar="TEXT",
                action=_Flatten, **meta,
            )  # fmt: skip
        else:
            metavar = "PATH" if f.name in PATHS else METAVARS.get(kind, "VALUE")
            parser.add_argument(
                *flags, dest=f.name, type=_parser(kind), default=default, **{"metavar": metavar, **meta}
            )


def from_namespace(cls: type, ns: argparse.Namespace, presets: dict[str, dict] | None = None) -> Any:
    """An instance of `cls` from parsed arguments (fields the parser has no flag for keep their defaults).

    With `presets`, the chosen preset's values stand in for the flags that were left out."""
    given = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if hasattr(ns, f.name)}
    if presets:
        given = {**presets[ns.preset], **{k: v for k, v in given.items() if v is not None}}
    return cls(**given)


def _parser(parse: Any) -> Any:
    """A flag's parser whose `InputError` sentence argparse prints as it is (not "invalid value")."""
    from sdlab.errors import InputError

    def parse_text(text: str) -> Any:
        try:
            return parse(text)
        except InputError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse_text.__name__ = getattr(parse, "__name__", "value")  # argparse names it in "invalid int value"
    return parse_text


def _shown(default: Any) -> bool:
    """Whether help should say the default: not for None, False, "" or [] (but for 0)."""
    return not (default is None or default is False or default in ("", []))


class _Flatten(argparse.Action):
    """Several values, each possibly "a|b", as one flat list."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, [text for value in values for text in value])


def _base_type(hint: Any) -> Any:
    """`int | None` -> int; `list[str]` stays `list[str]`."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint
