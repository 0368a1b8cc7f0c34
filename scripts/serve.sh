#!/usr/bin/env bash
# Installs the service (if needed) and starts it on the embedded default model.
# Any arguments go to `asr-stream serve`, e.g. `bash scripts/serve.sh --port 9000 --model base`.
set -o errexit -o pipefail -o nounset
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/asr-stream serve "$@"
