#!/usr/bin/env bash
# Creates .venv and installs ttsf with its test tools. torch is installed FIRST and pinned: with no
# torch present, resolving diffusers would pull a multi-GB CUDA build onto a CPU-only machine.
# TTSF_TORCH overrides the pin (e.g. TTSF_TORCH="torch==2.13.0 --index-url <your CUDA index>").
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet ${TTSF_TORCH:-torch==2.13.0}
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python -c "import torch, diffusers, prefect; print('ttsf env ready: torch', torch.__version__, '| diffusers', diffusers.__version__, '| prefect', prefect.__version__)"
