#!/usr/bin/env bash
# Create/refresh the project virtualenv (.venv) and Label Studio's own virtualenv (.venv-labelstudio).
# Idempotent: a stamp file records what was installed; nothing is reinstalled when inputs are unchanged.
# Usage: scripts/setup_venv.sh project|labelstudio|bench
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
LS_VERSION="1.23.2"
VENV_DIR="${CASTLAB_VENV_DIR:-.venv}"                 # make lock builds throwaway venvs elsewhere
LS_VENV_DIR="${CASTLAB_LS_VENV_DIR:-.venv-labelstudio}"
# The lock files pin every version CI passed with (Linux x86_64): installs use them as constraints, unless
# CASTLAB_NO_LOCK=1 (make lock) or on another machine type, where the pins may not exist.
lock_args() {
  if [ "${CASTLAB_NO_LOCK:-0}" != 1 ] && [ "$(uname -m)" = x86_64 ] && [ -f "$1" ]; then echo "-c $1"; fi
}

stamp_of() { cat "$@" 2>/dev/null | sha1sum | cut -c1-16; }
# up_to_date VENV STAMP LABEL: true (and says so) when VENV was built from STAMP.
up_to_date() {
  if [ -f "$1/.castlab-stamp" ] && [ "$(cat "$1/.castlab-stamp")" = "$2" ]; then echo "$3 up to date ($1)"; return 0; fi
  return 1
}
# new_venv VENV: create it if missing and bring pip up to date.
new_venv() {
  [ -x "$1/bin/python" ] || "$PYTHON" -m venv "$1"
  "$1/bin/python" -m pip install -q --upgrade pip "${@:2}"
}
# torch pinned: the CUDA build runs on CPU too, and torchvision needs its own torch (see docs/configuration.md, "GPU install").
case "$(uname -m)" in
  aarch64|arm64) torch_pins="torch==2.9.1 torchvision==0.24.1" ;;
  *) torch_pins="torch==2.14.1 torchvision==0.29.1" ;;
esac

case "${1:-project}" in
  project)
    venv="$VENV_DIR"
    lock="$(lock_args requirements.lock)"
    stamp="$(stamp_of pyproject.toml scripts/setup_venv.sh requirements.lock)$lock"
    up_to_date "$venv" "$stamp" "project venv" && exit 0
    new_venv "$venv" setuptools wheel
    "$venv/bin/python" -m pip install -q $lock $torch_pins
    # sam2 builds against the installed torch, without its CUDA extension (optional post-processing).
    SAM2_BUILD_CUDA=0 "$venv/bin/python" -m pip install -q $lock --no-build-isolation sam2==1.1.0
    "$venv/bin/python" -m pip install -q $lock -e '.[dev]'
    # insightface declares opencv-python, which must never sit beside opencv-python-headless (one cv2):
    # its real dependencies (onnx, onnxruntime, scipy, scikit-image...) are in pyproject.toml.
    "$venv/bin/python" -m pip install -q $lock --no-deps insightface==2.1
    echo "$stamp" > "$venv/.castlab-stamp"
    echo "project venv ready ($venv)"
    ;;
  labelstudio)
    venv="$LS_VENV_DIR"
    lock="$(lock_args requirements-labelstudio.lock)"
    stamp="label-studio==$LS_VERSION $(stamp_of requirements-labelstudio.lock)$lock"
    up_to_date "$venv" "$stamp" "Label Studio venv" && exit 0
    new_venv "$venv"
    # Its own venv: label-studio pins python-json-logger==2.0.4, which conflicts with prefect.
    "$venv/bin/python" -m pip install -q $lock "label-studio==$LS_VERSION"
    echo "$stamp" > "$venv/.castlab-stamp"
    echo "Label Studio venv ready ($venv)"
    ;;
  bench)
    # Baselines the benchmarks compare against (imagededup pulls torch): never in the project venv.
    venv=.venv-bench
    stamp="imagededup==0.3.3"
    up_to_date "$venv" "$stamp" "benchmark venv" && exit 0
    new_venv "$venv"
    "$venv/bin/python" -m pip install -q $torch_pins "$stamp"
    echo "$stamp" > "$venv/.castlab-stamp"
    echo "benchmark venv ready ($venv)"
    ;;
  *) echo "usage: $0 project|labelstudio|bench" >&2; exit 2 ;;
esac
