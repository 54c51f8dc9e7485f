"""Where a measurement was made: the command, the machine and the date, recorded beside every figure.

The docs render their timing and quality tables from the JSON that the benchmark, demo and eval commands write;
each of those files carries this record, so every table can name what produced it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from sdlab.atomic import atomic_path
from sdlab.loading import cpu_runs_bfloat16
from sdlab.version import __version__


def cpu_name() -> str:
    """The CPU's model name as the OS reports it (`/proc/cpuinfo`'s "model name" on Linux), else `platform`'s."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def provenance(command: str | None = None) -> dict:
    """The record a measurement carries: {"command", "date", "cpu", "cores", "native_bfloat16", "gpu", "torch",
    "sdlab"}.

    `command` defaults to the running process's own command line (`python scripts/NAME.py ARGS`, or `sdlab ...`).
    `date` is the UTC date (ISO 8601); `cores` what torch computes with (`torch.get_num_threads()`);
    `native_bfloat16` whether the CPU has AVX512-BF16 or AMX (what `--dtype auto` checks); `gpu` the CUDA
    device's name, or None.
    """
    if command is None:
        script = Path(sys.argv[0])
        if script.name == "sdlab" or script.name == "__main__.py" or script.suffix != ".py":
            head = ["sdlab"]
        else:
            try:
                head = ["python", str(script.resolve().relative_to(Path.cwd()))]
            except ValueError:
                head = ["python", script.name]
        command = shlex.join(head + sys.argv[1:])
    return {
        "command": command,
        "date": _dt.datetime.now(_dt.UTC).date().isoformat(),
        "cpu": cpu_name(),
        "cores": torch.get_num_threads(),
        "native_bfloat16": cpu_runs_bfloat16(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "sdlab": __version__,
        "os_cpu_count": os.cpu_count(),
    }


def write_measurement(path: str | Path, report: dict, command: str | None = None) -> dict:
    """Write `report` as JSON to `path` with its `provenance` record added (complete or not at all, its folder
    made if missing); returns what was written. Every benchmark, demo and eval file goes through here."""
    record = {**report, "provenance": provenance(command)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return record
