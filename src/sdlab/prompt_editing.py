"""AUTOMATIC1111's prompt editing: which text a prompt stands for at each sampling step, and `AND`.

Syntax (A1111's wiki, "Prompt editing" and "Alternating words"), for a run of N steps:
    [from:to:when]   `from` until step `when`, then `to`       [cat:dog:10], [cat:dog:0.25] (a fraction of N)
    [to:when]        nothing until `when`, then `to`           [snow:0.5]
    [from::when]     `from` until `when`, then nothing          [blurry::3]
    [a|b|c]          a, b, c, a, ... one per step              [cat|dog], [fe|]male
    p1 AND p2 :w     composable diffusion (Liu et al. 2022): each part guides with its own weight

`when` with a decimal point is a fraction of the steps, without one a step number, clipped to N: A1111 1.6's
rule, so `[thick:15]` at 4 steps never adds "thick". A text holds from the step after the previous
switch to its own `end_at_step`, inclusive, with steps counted from 0, as A1111's
`reconstruct_cond_batch` reads its schedule: `[a:b:5]` at 10 steps is `a` for steps 0-5 and `b` for 6-9.
Brackets that are not prompt editing stay for the attention syntax (`sdlab.prompts`); a prompt the
grammar cannot read is the same text at every step, as in A1111.

The grammar is A1111's (`modules/prompt_parser.py`, `schedule_parser`), read by lark as A1111 reads it.
"""

from __future__ import annotations

import functools
import re
from typing import Any

# A1111's schedule grammar: stray brackets and colons at the top level are text; "!" keeps the brackets of
# the attention syntax in the text, for `sdlab.prompts` to read afterwards
GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
        | "(" prompt ":" prompt ")"
        | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""
_AND = re.compile(r"\bAND\b")
# a part of an AND prompt and its weight: "a cat :1.5" -> ("a cat", 1.5); A1111's `re_weight`
_PART_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """[(end_at_step, text), ...] in step order, the last ending at `steps`: A1111's
    `get_learned_conditioning_prompt_schedules` for one prompt (no hires pass). `steps` >= 1.

    >>> prompt_schedule("a [b:c:0.5] d", 10)
    [(5, 'a b d'), (10, 'a c d')]
    """
    import lark

    try:
        tree = _parser().parse(prompt)
    except lark.exceptions.LarkError:
        return [(steps, prompt)]
    ends = {steps}
    for node in tree.iter_subtrees():
        if node.data == "scheduled":
            when = _when(node.children[3], steps)
            if when >= 1:
                ends.add(when)
        elif node.data == "alternate":
            ends.update(range(1, steps + 1))
    return [(end, _render(tree, end, steps)) for end in sorted(ends)]


def text_at(schedule: list[tuple[int, str]], step: int) -> str:
    """The text of `schedule` at `step` (counted from 0): the first entry whose end is at or after it."""
    return next((text for end, text in schedule if step <= end), schedule[-1][1])


def split_and(prompt: str) -> list[tuple[str, float]]:
    """The parts of a composable prompt with their weights: "a cat AND a dog :0.5" ->
    [("a cat", 1.0), (" a dog", 0.5)], as A1111's `get_multicond_prompt_list`. A prompt without the
    upper-case word AND is one part of weight 1 (a trailing ":0.5" is then a weight as well, as in A1111)."""
    parts = []
    for part in _AND.split(prompt):
        match = _PART_WEIGHT.search(part)
        text, weight = match.groups() if match is not None else (part, None)
        parts.append((text, 1.0 if weight is None else float(weight)))
    return parts


@functools.cache
def _parser() -> Any:
    import lark

    return lark.Lark(GRAMMAR)


def _when(number: Any, steps: int) -> int:
    """The step a `when` names: a fraction of `steps` with a decimal point, else a step; at most `steps`."""
    text = str(number)
    value = float(text) * steps if "." in text else float(text)
    return min(steps, int(value))


def _render(node: Any, step: int, steps: int) -> str:
    """The text of a parse (sub)tree at `step` (1-based, as A1111's `at_step`)."""
    import lark

    if node is None:
        return ""
    if isinstance(node, lark.Token):
        return str(node)
    if node.data == "scheduled":
        before, after, _, number, _ = node.children
        return _render(before if step <= _when(number, steps) else after, step, steps)
    if node.data == "alternate":
        return _render(node.children[(step - 1) % len(node.children)], step, steps)
    return "".join(_render(child, step, steps) for child in node.children)
