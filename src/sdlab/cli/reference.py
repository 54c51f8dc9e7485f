"""The CLI reference, generated from the parser that the options dataclasses build (the docs' "CLI reference").

Every flag's text is the `help` of its `option(...)` field, so the reference and `sdlab COMMAND --help` cannot
drift apart: the docs build renders `markdown()` into `cli.md`.
"""

from __future__ import annotations

import argparse

from sdlab.cli.main import build_parser
from sdlab.training import RECIPES


def markdown() -> str:
    """Markdown for every `sdlab` command: its description, usage line and a table of its flags.

    Returns one `## sdlab COMMAND` section per command, in the order `sdlab --help` lists them; a flag's
    row gives its names and metavar, then its help text with the default argparse shows.
    """
    parser = build_parser([recipe.command for recipe in RECIPES])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    parts = [
        "# CLI reference\n\n",
        "Generated from the options dataclasses that also build `sdlab COMMAND --help`, so the two agree. "
        "Every command exits with status 2 and one sentence on bad input.\n\n",
    ]
    for name, command in sub.choices.items():
        parts.append(f"## sdlab {name}\n\n{helps.get(name) or command.description or ''}.\n\n")
        usage = " ".join(command.format_usage().split())
        parts.append(f"```text\n{usage.removeprefix('usage: ')}\n```\n\n")
        rows = [_row(action) for action in command._actions if action.help != argparse.SUPPRESS]
        rows = [row for row in rows if row]
        if rows:
            parts.append("| argument | meaning |\n| --- | --- |\n" + "".join(rows) + "\n")
    return "".join(parts)


def _row(action: argparse.Action) -> str | None:
    if isinstance(action, argparse._HelpAction):
        return None
    if action.option_strings:
        metavar = "" if action.nargs == 0 else f" {action.metavar or action.dest.upper()}"
        names = ", ".join(f"`{flag}{metavar}`" for flag in action.option_strings)
    else:
        names = f"`{action.metavar or action.dest.upper()}`"
    text = (action.help or "") % {"default": action.default, "prog": "sdlab"} if action.help else ""
    if action.choices and action.option_strings != ["--preset"]:
        text = f"{text} (one of: {', '.join(map(str, action.choices))})"
    return f"| {names} | {_escape(text)} |\n"


def _escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
