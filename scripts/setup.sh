#!/usr/bin/env bash
# Installs synpref's CPU stack into .venv (and, with --test-services, what the test suite's
# real services need). Idempotent: a stamp of the inputs skips work that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
want_services=0
for arg in "$@"; do
  case $arg in
    --test-services) want_services=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

stamp_of() { cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16; }

if [[ ! -x $VENV/bin/python ]]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
if [[ "$(cat $VENV/.synpref-stamp 2>/dev/null)" != "$(stamp_of)" ]]; then
  echo "setup: installing synpref and its CPU stack into $VENV (first run takes a few minutes)"
  # The CPU torch wheel first, so nothing pulls a multi-GB CUDA build.
  $VENV/bin/pip install -q "torch==2.13.0"
  $VENV/bin/pip install -q -e ".[cpu,scale,dev]"
  # PyPI's torchvision/torchaudio builds break against the CPU torch, and transformers imports
  # them when present.
  $VENV/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  stamp_of > $VENV/.synpref-stamp
fi

if (( want_services )); then
  ./scripts/setup-test-services.sh
fi
