#!/usr/bin/env bash
# Install everything (scripts/setup.sh) and run the whole test suite: lint,
# unit tests, and -- as root -- the network-namespace integration tests. A
# whole run also checks that the unit tests cover the daemon core (>= 90%),
# and runs the unit tests again against Debian 12's builds of the
# dependencies (scripts/test-debian-deps.sh; the main run has PyPI's newest).
#
# On a kernel without multicast routing (tests/integration/mroute_probe.py)
# the integration tests that need it are skipped in the main run and run
# afterwards in a VM with Debian 12's kernel (scripts/vm-run.sh); so do the
# tests named as arguments if any of them is under tests/integration.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$here/scripts/setup.sh" | tail -n 1)
"$venv/bin/pip" install -q "$here[test]"  # the test tools, beside the production install
cd "$here"
"$venv/bin/ruff" check .

# Exit status 1: the kernel has no multicast routing (0: it has; 2: cannot tell).
vm=
if [ "$(id -u)" -eq 0 ]; then
    probe=0
    "$venv/bin/python" tests/integration/mroute_probe.py >/dev/null 2>&1 || probe=$?
    if ((probe == 1)); then vm=1; fi
fi
in_vm() {  # in_vm PYTEST_ARGS...: the guest has no network: install what it needs first
    bash scripts/build-deb.sh --deps-only  # test_deb builds the Debian package
    echo "test: this kernel has no multicast routing; the integration tests run in a VM" >&2
    # the few bounds a test puts on how long the daemon takes to answer are
    # for a real CPU: ten times as long under emulation (tests/integration)
    SMCROUTE_TEST_TIME_SCALE=10 bash scripts/vm-run.sh --timeout 4800 -- \
        "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
}

if (($# == 0)); then
    # The whole suite: the daemon core must stay covered by its unit tests.
    cov=()
    for m in core corestate kernelevents ctlrequests engine flows ledger mrdisc commands \
             effects budget channel; do
        cov+=("--cov=smcroute.unprivileged.$m")
    done
    cov+=(--cov-report=term --cov-fail-under=90)
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "${cov[@]}"
    # and the unit tests once more, against Debian 12's builds of the dependencies
    bash "$here/scripts/test-debian-deps.sh"
    if [ -n "$vm" ]; then
        in_vm tests/integration
    fi
    exit 0
fi
if [ -n "$vm" ] && [[ " $* " == *tests/integration* ]]; then
    in_vm "$@"
    exit
fi
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
