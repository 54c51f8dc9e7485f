"""The docs: the site builds with `mkdocs build --strict`, offline, and every block marked `<!-- run -->` runs.

Blocks of one page run in order in one fresh folder (so a page can make its data, then train on it), on the
shipped digits model. After each block, every image, JSON and safetensors file it wrote must be valid, and
every `-o FILE` it names must exist. Training steps are capped at $SDLAB_DOCS_TRAIN_STEPS (2 by default; 0 runs
the docs' own counts). Markers: `<!-- run -->`, `<!-- run: serve -->` (an `sdlab serve` on a free port is
started first, and 7860 in the block becomes its port), `<!-- run: fails -->` (exit status 2, one sentence).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"^<!-- run(?::\s*(?P<mode>[\w-]+))? -->\n```(?P<lang>\w+)[^\n]*\n(?P<code>.*?)^```", re.M | re.S
)
TRAINING = re.compile(
    r"^\s*(sdlab|accelerate launch.*?)\s+(finetune|lora|textual-inversion|dreambooth|distill|distill-decoder|train-base)\b"
)
BIN = Path(sys.executable).parent


def blocks(page: Path) -> list[tuple[str, str, str]]:
    """(mode, language, code) of every marked block of a page, in order."""
    return [(m["mode"] or "", m["lang"], m["code"]) for m in BLOCK.finditer(page.read_text())]


def cap_steps(code: str, lang: str, cap: int) -> str:
    """Training steps at most `cap`: `--steps N` in a training command's lines, `steps=N` in Python."""
    if not cap:
        return code
    if lang == "python":
        return re.sub(r"\bsteps=(\d+)", lambda m: f"steps={min(int(m[1]), cap)}", code)
    out, training = [], False
    for line in code.split("\n"):
        training = bool(TRAINING.match(line)) or (training and out and out[-1].rstrip().endswith("\\"))
        if training:
            line = re.sub(r"--steps (\d+)", lambda m: f"--steps {min(int(m[1]), cap)}", line)
        out.append(line)
    return "\n".join(out)


def check_outputs(work: Path, since: float, code: str) -> None:
    """Every file the block wrote is valid; every `-o FILE` it names exists (FILE-0.png for a batch)."""
    for path in work.rglob("*"):
        if not path.is_file() or path.stat().st_mtime < since or "checkpoints" in path.parts:
            continue
        suffix = path.suffix.lower()
        if suffix in (".png", ".jpg", ".jpeg", ".webp"):
            with Image.open(path) as image:
                image.load()
                assert image.width > 0 and image.height > 0, path
        elif suffix == ".json":
            json.loads(path.read_text())
        elif suffix == ".safetensors":
            with safe_open(path, "pt") as f:
                assert list(f.keys()), f"{path} holds no tensors"
    cwd = work  # a block's `mkdir -p DIR && cd DIR` holds for its later lines
    for line in code.replace("\\\n", " ").split("\n"):
        try:
            words = shlex.split(line, comments=True) if not line.lstrip().startswith("python -c") else []
        except ValueError:  # a line shlex cannot read names no output to check
            words = []
        if words[:1] == ["mkdir"] and "cd" in words:
            cwd = work / words[words.index("cd") + 1]
        for flag, value in zip(words, words[1:], strict=False):
            if words[:1] == ["sdlab"] and flag in ("-o", "--output") and Path(value).suffix == ".png":
                target = Path(value)
                candidates = [
                    b / t for b in (cwd, work) for t in (target, target.with_name(f"{target.stem}-0.png"))
                ]
                assert any(c.exists() for c in candidates), f"{value} was not written by: {line}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(work: Path, env: dict) -> tuple[subprocess.Popen, int]:
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "sdlab"), "serve", "--port", str(port)], cwd=work, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/sdapi/v1/options", timeout=2) as r:
                if r.status == 200:
                    return server, port
        except OSError:
            if server.poll() is not None:
                raise AssertionError(f"sdlab serve exited: {server.stderr.read().decode()[-2000:]}") from None
            time.sleep(0.5)
    server.kill()
    raise AssertionError("sdlab serve did not answer within 120 s")


def run_block(work: Path, mode: str, lang: str, code: str, env: dict, port: int | None) -> None:
    if port is not None:
        code = code.replace("7860", str(port))
    cap = int(os.environ.get("SDLAB_DOCS_TRAIN_STEPS", "2") or 0)
    code = cap_steps(code, lang, cap)
    command = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    since = time.time() - 1
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    if mode == "fails":
        sentence = done.stderr.strip()
        assert done.returncode == 2, f"expected exit status 2, got {done.returncode}:\n{code}\n{sentence}"
        assert "Traceback" not in sentence and len(sentence.splitlines()) == 1, sentence
        return
    assert done.returncode == 0, (
        f"block failed ({done.returncode}):\n{code}\n--- stderr ---\n{done.stderr[-3000:]}"
    )
    check_outputs(work, since, code)


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: p.name)
def test_runnable_blocks(page: Path, tmp_path: Path) -> None:
    (tmp_path / "src").symlink_to(ROOT / "src")  # blocks may name the shipped model by its path
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "SDLAB_CACHE_DIR": str(tmp_path / ".cache"),
    }
    env.pop("SDLAB_DTYPE", None)
    server = port = None
    try:
        for mode, lang, code in blocks(page):
            if mode == "serve" and server is None:
                server, port = start_server(tmp_path, env)
            run_block(tmp_path, mode, lang, code, env, port)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


def test_steps_are_capped_in_training_commands_only() -> None:
    code = 'sdlab lora d -o r --steps 400 \\\n    --rank 8\nsdlab generate "x" --steps 25\nsdlab dreambooth d \\\n    --steps 300'
    capped = cap_steps(code, "bash", 2)
    assert "lora d -o r --steps 2 " in capped and "--steps 25" in capped and "    --steps 2" in capped
    assert (
        cap_steps("f(steps=300, num_inference_steps=20)", "python", 2) == "f(steps=2, num_inference_steps=20)"
    )


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {"script": "src", "link": "href", "img": "src", "iframe": "src"}
        if tag in names:
            self.refs += [v for k, v in attrs if k == names[tag] and v]


def test_site_builds_strict_and_offline(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 12
    for html in pages:
        parser = _Refs()
        parser.feed(html.read_text())
        remote = [r for r in parser.refs if re.match(r"(https?:)?//", r) and "127.0.0.1" not in r]
        assert not remote, f"{html.relative_to(site)} loads {remote}"
    cli = (site / "cli.html").read_text()
    for command in ("sdlab generate", "sdlab make-digits", "sdlab textual-inversion", "--guidance-scale"):
        assert command in cli
    api = (site / "python-api.html").read_text()
    assert "load_pipeline" in api and "make_digits_folder" in api


def test_readme_is_short_and_ci_runs_its_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    command = next(
        line for line in readme.splitlines() if line.startswith("python3 -m venv") and "pytest" in line
    )
    assert command in (ROOT / ".ci" / "run").read_text()


def test_cli_reference_lists_every_flag_of_every_command() -> None:
    import argparse

    from sdlab.cli.main import build_parser
    from sdlab.cli.reference import markdown
    from sdlab.training import RECIPES

    text = markdown()
    parser = build_parser([recipe.command for recipe in RECIPES])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        assert f"## sdlab {name}\n" in text
        for action in command._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in text, f"sdlab {name} {flag} is missing from the CLI reference"
