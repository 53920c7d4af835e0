#!/usr/bin/env bash
# What the test suite's real services need beyond .venv: the Argilla server in its own venv
# (it pins pydantic/httpx/fastapi versions the SDK venv cannot share), Debian's redis-server,
# Debian's chromium for the browser test (no browser downloads) and a compose client that
# validates docker-compose.yml. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
SERVER_VENV=.venv-argilla-server
SERVER_PINS=(argilla-server==2.8.0 "click<8.2" "huggingface-hub<1")

apt_packages=()
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
[[ -x /usr/bin/chromium ]] || apt_packages+=(chromium chromium-driver)
# A compose client validates docker-compose.yml in the tests (no engine is needed for that).
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  apt_packages+=(docker-compose)
fi
if (( ${#apt_packages[@]} )); then
  echo "setup-test-services: apt-get install ${apt_packages[*]}"
  SUDO=""
  (( EUID == 0 )) || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
fi

stamp="${SERVER_PINS[*]}"
if [[ "$(cat $SERVER_VENV/.synpref-stamp 2>/dev/null)" != "$stamp" ]]; then
  echo "setup-test-services: installing ${SERVER_PINS[*]} into $SERVER_VENV (about a minute)"
  [[ -x $SERVER_VENV/bin/python ]] || "$PY" -m venv "$SERVER_VENV"
  $SERVER_VENV/bin/pip install -q "${SERVER_PINS[@]}"
  echo "$stamp" > $SERVER_VENV/.synpref-stamp
fi

# The browser test drives Debian's chromium through Playwright's Python driver
# (executable_path=/usr/bin/chromium); Playwright's own browser downloads are never used.
if [[ -x .venv/bin/python ]] && ! .venv/bin/python -c "import playwright" 2>/dev/null; then
  echo "setup-test-services: installing playwright (driver only) into .venv"
  .venv/bin/pip install -q "playwright>=1.45"
fi
echo "setup-test-services: ready (redis-server, $SERVER_VENV, chromium)"
