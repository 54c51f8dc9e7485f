#!/usr/bin/env bash
# The lowest versions pyproject.toml allows, tested: a fresh virtual environment where uv resolves every
# direct dependency to its lowest allowed version (torch stays at the CPU wheel the README installs, since
# PyPI's older torch wheels are multi-GB CUDA builds), then the whole test suite.
#
#     bash scripts/check_lowest_versions.sh [VENV_DIR]
#
# A failure names the dependency whose lower bound must rise (pyproject.toml's "dependencies").
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-/tmp/sdlab-lowest}"
rm -rf "$venv"
python3 -m venv "$venv"
. "$venv/bin/activate"
pip install -q torch==2.13.0 uv
uv pip install -q --resolution lowest-direct -e ".[test]"
uv pip list 2>/dev/null | grep -iE "^(diffusers|transformers|accelerate|safetensors|pillow|numpy|scipy|peft|gradio|fastapi|uvicorn|huggingface-hub|torch) "
pytest -q -p no:cacheprovider
