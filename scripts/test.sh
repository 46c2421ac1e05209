#!/usr/bin/env bash
# Run the whole test suite (the README's second command; .ci/run runs this).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k ring`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
