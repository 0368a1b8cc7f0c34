#!/usr/bin/env bash
# Creates .venv and installs the project into it (editable).
#   bash scripts/setup.sh          runtime only (what `asr-stream serve` needs)
#   bash scripts/setup.sh --dev    plus the test and lint tools
# Safe to re-run: a satisfied install takes a few seconds.
set -o errexit -o pipefail -o nounset
cd "$(dirname "$0")/.."

extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "setup: Python 3.11 is required (found $("$python" --version 2>&1))" >&2
    exit 1
fi

[[ -x .venv/bin/python ]] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
export PIP_PROGRESS_BAR=off
# torch first, pinned: with it in place the resolver never reaches for a CUDA build.
"${pip[@]}" install "torch==2.13.0"
"${pip[@]}" install -e ".${extras}"
