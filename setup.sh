#!/usr/bin/env bash
# Create (or reuse) .venv and install ggt-search into it.
# torch goes first: a bare `torch` requirement would pull a multi-GB CUDA build.
# TORCH_SPEC picks another build, e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128".
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
.venv/bin/python -m pip install -q -e ".[test]"
