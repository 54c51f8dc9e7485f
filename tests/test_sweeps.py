"""Sweep reports: JSON, a markdown table and a PNG plot, from rows of numbers."""

from __future__ import annotations

import json

from PIL import Image

from sdlab.evaluation.sweeps import Sweep, markdown_table, write_sweep


def test_a_sweep_is_written_as_json_markdown_and_a_plot(tmp_path):
    rows = [
        {"scheduler": s, "steps": n, "fid_ratio": 10.0 / n + k, "prompt_accuracy": 0.5 + n / 100}
        for k, s in enumerate(["ddim", "pndm"])
        for n in (5, 10, 20)
    ]
    sweep = Sweep("schedulers", "Schedulers x steps", rows, "steps", ("fid_ratio", "prompt_accuracy"),
                  series="scheduler")  # fmt: skip
    js, md, png = write_sweep(sweep, tmp_path / "out", "caption text")
    data = json.loads(js.read_text())
    assert data["rows"] == rows and data["caption"] == "caption text"
    assert data["provenance"]["date"] and data["provenance"]["cores"] >= 1  # where it was measured
    table = md.read_text().splitlines()
    assert table[2] == "| scheduler | steps | fid_ratio | prompt_accuracy |"
    assert table[4] == "| ddim | 5 | 2.000 | 0.550 |" and len(table) == 2 + 2 + len(rows)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 600
    assert markdown_table([{"a": None, "b": 1}]).splitlines()[-1] == "|  | 1 |"
