#!/usr/bin/env bash
# One-time set-up: a virtual environment in .venv with lipcore (editable), the pipeline tools and the test tools.
# torch is installed first and pinned, so that no package pulls a multi-GB CUDA build by accident. On a GPU
# machine, install the CUDA build of torch into .venv before running this (any 2.x satisfies lipcore).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[pipeline,dev,parallel]"
# the pretrained DCGAN face generator (lipcore/gan.py reads its weights file only); its declared dependencies
# (wandb, torchvision, ...) are not needed
.venv/bin/python -m pip install -q --no-deps gan-face-generate==1.1.1
echo "set-up done: $(.venv/bin/python -c 'import torch, lipcore; print("torch", torch.__version__)')"
