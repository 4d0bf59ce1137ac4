#!/usr/bin/env bash
# Set up (idempotent) and run the demo province: the lab in network namespaces and `cmon probe` against it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m lab.demo "$@"
