"""Prompts from a file: one generation per line, as AUTOMATIC1111's "Prompts from file or textbox" script.

A line is a prompt, or options in that script's syntax (shell quoting):

    a handwritten digit 7
    --prompt "a thick handwritten digit 3" --negative_prompt "slanted" --steps 8 --cfg_scale 3 --seed 11

Each line becomes one `GenerationRequest` on top of the command line's request, and every image of the
file gets a global index (lines in order, images in order within a line). A line without `--seed`
takes the base seed plus its first image's index, so each image's seed is fixed by the file alone:
split the jobs across processes (accelerate's `split_between_processes`) and the union of the outputs equals a one-process run.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlab.errors import InputError
from sdlab.options import text_parser
from sdlab.sampling.schedulers import resolve_sampler, schedule_settings
from sdlab.service.request import GenerationRequest, a1111_fields

# A1111's keys -> (GenerationRequest field, parser): every field with an A1111 name (steps, cfg_scale,
# batch_size, n_iter, ..., and sdlab's guidance_interval and deep_cache), and the sampler's two keys
KEYS: dict[str, tuple[str, Callable[[str], Any]]] = {
    **{key: (name, text_parser(GenerationRequest, name)) for key, name in a1111_fields().items()},
    "sampler_name": ("sampler_name", str),
    "scheduler": ("schedule_type", str),
}
# A1111 keys that do not change an sdlab image here (file saving, display) are accepted and skipped
SKIPPED = {
    "outpath_samples",
    "outpath_grids",
    "prompt_for_display",
    "do_not_save_samples",
    "do_not_save_grid",
}
MAX_LINES = 10_000


@dataclass(frozen=True)
class Job:
    """One line of the file: its request, its line number (from 1) and its first image's global index."""

    line: int
    request: GenerationRequest
    first: int

    @property
    def images(self) -> int:
        return self.request.num_images_per_prompt * self.request.batch_count


def read_prompts_file(path: str | Path, base: GenerationRequest, base_seed: int) -> list[Job]:
    """The jobs of a prompts file (UTF-8, blank lines and `#` comments skipped) on top of `base`.

    Raises `InputError` naming the line for an unknown option, a bad value or a request out of range."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the prompts file {path}: {err}") from None
    jobs: list[Job] = []
    first = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if len(jobs) >= MAX_LINES:
            raise InputError(f"{path} has more than {MAX_LINES} prompts; split it into several files")
        changes = parse_line(line, f"{path}, line {number}")
        request = base.replace(**changes)
        if "seed" not in changes:
            request = request.replace(seed=base_seed + first)
        try:
            request.validate()
        except InputError as err:
            raise InputError(f"{path}, line {number}: {err}") from None
        job = Job(number, request, first)
        jobs.append(job)
        first += job.images
    if not jobs:
        raise InputError(f"{path} holds no prompt (one per line; # starts a comment)")
    return jobs


def parse_line(line: str, where: str) -> dict[str, Any]:
    """A line's changes to the request: a plain prompt, or `--key value` pairs in A1111's syntax."""
    if not line.startswith("--"):
        return {"prompt": line}
    try:
        words = shlex.split(line)
    except ValueError as err:
        raise InputError(f'{where}: {err} (quote values with spaces: --prompt "a cat")') from None
    changes: dict[str, Any] = {}
    sampler = schedule = None
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--"):
            raise InputError(f"{where}: expected an option like --steps, got {word!r}")
        key = word[2:].replace("-", "_")
        if i + 1 >= len(words):
            raise InputError(f"{where}: {word} needs a value")
        value = words[i + 1]
        i += 2
        if key in SKIPPED:
            continue
        if key not in KEYS:
            raise InputError(f"{where}: unknown option {word}; known: --{', --'.join(KEYS)}")
        field, parse = KEYS[key]
        try:
            parsed = parse(value)
        except InputError as err:
            raise InputError(f"{where}: {word}: {err}") from None
        except ValueError:
            kind = {int: "an integer", float: "a number"}.get(parse, "a value")
            raise InputError(f"{where}: {word} takes {kind}, got {value!r}") from None
        if field == "seed" and parsed == -1:
            continue  # A1111's "random": the file's own seed for this line (the base seed + K)
        if field == "sampler_name":
            sampler = parsed
        elif field == "schedule_type":
            schedule = parsed
        else:
            changes[field] = parsed
    if sampler is not None or schedule is not None:
        try:
            scheduler = resolve_sampler(sampler, schedule)
            if scheduler is not None:
                changes["scheduler"] = scheduler
            changes.update({k: v for k, v in schedule_settings(schedule, scheduler).items() if v is not None})
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
    return changes
