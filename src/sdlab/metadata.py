"""A1111's "parameters" text: the generation settings that PNG-info readers understand.

AUTOMATIC1111's web UI stores it in a PNG text chunk named "parameters", and A1111's PNG Info tab,
ComfyUI, Civitai and InvokeAI's importers read it back::

    a photo of a cat
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: v1-5

We write it as A1111's `processing.create_infotext` does and parse it as A1111's
`infotext_utils.parse_generation_parameters` does, so the two stay compatible.
"""

from __future__ import annotations

import json
import re

from sdlab.errors import InputError

# A1111's `re_param`: a key, a colon, then a JSON-quoted value or anything up to the next comma.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_KEY = re.compile(r"\w[\w \-/]+")
NEGATIVE = "Negative prompt:"


def format_parameters(prompt: str, negative_prompt: str | None, settings: dict[str, object]) -> str:
    """The infotext for one image: prompt, "Negative prompt:" line (if any), then the settings line.

    Settings keep their order; None values are left out, as A1111 does. Values that a reader would
    split apart (commas, colons, quotes, newlines) are written as JSON strings. Readers recognise the
    settings line only when it has at least three entries, so give at least three.
    """
    items = []
    for key, value in settings.items():
        if value is None:
            continue
        if not isinstance(key, str) or not _RE_KEY.fullmatch(key):
            raise InputError(
                f"setting name {key!r} cannot be written to the parameters text; use two or more "
                "letters, digits, spaces, '_', '-' or '/', starting with a letter or digit."
            )
        items.append(f"{key}: {_quote(str(value))}")
    negative = negative_prompt.strip() if negative_prompt else ""
    negative_line = f"\n{NEGATIVE} {negative}" if negative else ""
    return f"{prompt.strip()}{negative_line}\n{', '.join(items)}".strip()


def parse_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """Split infotext into (prompt, negative_prompt, settings); the inverse of `format_parameters`.

    Prompts may span lines. The last line is the settings line only if it holds at least three
    "Key: value" entries (A1111's rule); otherwise it belongs to the prompt and settings are empty.
    Quoted values are unquoted; all values are strings, as written.
    """
    *lines, last = [line.rstrip("\r") for line in text.strip().split("\n")]
    if len(RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in lines:
        if not negative_lines and line.lstrip().startswith(NEGATIVE):
            negative_lines.append(line.lstrip()[len(NEGATIVE) :])
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)

    settings = {key: _unquote(value) for key, value in RE_PARAM.findall(last)}
    return "\n".join(prompt_lines).strip(), "\n".join(negative_lines).strip(), settings


def _quote(value: str) -> str:
    # A1111 quotes values holding ',', ':' or '\n'. We also quote '"' (so a value that is itself
    # quoted survives the reader's unquoting), other line breaks, surrounding spaces (the reader
    # strips them) and the empty string (the reader can't tell it from a missing value).
    if value and value == value.strip() and not any(c in value for c in ',:"\n\r'):
        return value
    return json.dumps(value, ensure_ascii=False)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
