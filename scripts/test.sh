#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Lab tests need root; they skip with a reason otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -q -ra "$@"
