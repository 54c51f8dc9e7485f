"""MkDocs hooks: the generated CLI reference page, and tables rendered from the measurements' JSON.

- `cli.md` is generated from the parser the options dataclasses build (`sdlab.cli.reference`).
- `<!-- table: NAME -->` on a line of its own becomes the table `_tables.TABLES[NAME]` renders.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mkdocs.structure.files import File

sys.path.insert(0, str(Path(__file__).parent))
from _tables import TABLES  # noqa: E402

MARKER = re.compile(r"^<!-- table: ([\w-]+) -->$", re.MULTILINE)


def on_files(files, config):
    from sdlab.cli.reference import markdown

    files.append(File.generated(config, "cli.md", content=markdown()))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    def render(match: re.Match) -> str:
        name = match.group(1)
        if name not in TABLES:
            raise KeyError(f"{page.file.src_path}: no table named {name!r} (docs/_tables.py)")
        return TABLES[name]()

    return MARKER.sub(render, markdown)
