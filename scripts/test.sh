#!/usr/bin/env bash
# Install everything (scripts/setup.sh) and run the whole test suite: lint,
# unit tests, and -- as root -- the network-namespace integration tests.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$here/scripts/setup.sh" | tail -n 1)
cd "$here"
"$venv/bin/ruff" check .
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
