#!/usr/bin/env bash
# What the test suite's real services need beyond .venv (Argilla server venv, redis, chromium).
# Idempotent. Filled in by the annotation work.
set -euo pipefail
cd "$(dirname "$0")/.."
