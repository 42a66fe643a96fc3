#!/usr/bin/env bash
# The test command (README, "The tests"; .ci/run calls exactly this): installs the system packages some
# tests need (scripts/system-deps.sh: Debian's chromium and PostgreSQL; a no-op once they are there),
# sets up .venv (idempotent), then runs the whole suite, offline, on the CPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/python -m pytest -q "$@"
