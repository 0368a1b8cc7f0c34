#!/usr/bin/env bash
# Installs everything the tests need (system packages, .venv with dev tools) and runs them.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k websocket -x`.
set -o errexit -o pipefail -o nounset
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/setup.sh --dev
.venv/bin/python -m ruff check streaming encoder decoder client scripts tests
.venv/bin/python -m mypy  # the packages and files are listed in pyproject.toml [tool.mypy]
exec .venv/bin/python -m pytest "$@"
