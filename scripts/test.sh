#!/usr/bin/env bash
# Install everything (scripts/setup.sh) and run the whole test suite: lint,
# unit tests, and -- as root -- the network-namespace integration tests. A
# whole run also checks that the unit tests cover the daemon core (>= 90%),
# and runs the unit tests again against Debian 12's builds of the
# dependencies (scripts/test-debian-deps.sh; the main run has PyPI's newest).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$here/scripts/setup.sh" | tail -n 1)
"$venv/bin/pip" install -q "$here[test]"  # the test tools, beside the production install
cd "$here"
"$venv/bin/ruff" check .
cov=()
if (($# == 0)); then
    # The whole suite: the daemon core must stay covered by its unit tests.
    for m in core corestate kernelevents ctlrequests engine flows ledger mrdisc commands \
             effects budget channel; do
        cov+=("--cov=smcroute.unprivileged.$m")
    done
    cov+=(--cov-report=term --cov-fail-under=90)
fi
if (($# == 0)); then
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "${cov[@]}"
    # and the unit tests once more, against Debian 12's builds of the dependencies
    exec bash "$here/scripts/test-debian-deps.sh"
fi
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
