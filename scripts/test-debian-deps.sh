#!/usr/bin/env bash
# The unit tests against Debian 12's own builds of the dependencies
# (python3-prctl 1.8.1, python3-msgpack 1.0.3, python3-pyroute2 0.7.2,
# python3-structlog 22.3.0: the floors in pyproject.toml), in a venv that
# sees Debian's packages and holds only smcroute-py and the test tools.
# scripts/test.sh runs it after the main suite (which has PyPI's newest).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SMCROUTE_DEBIAN_VENV:-/opt/smcroute-py/debian-deps}
apt_wait=(-o DPkg::Lock::Timeout=600 -o APT::Lock::Timeout=600)
need=()
for pkg in python3-prctl python3-msgpack python3-pyroute2 python3-structlog python3-venv; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
    echo "test-debian-deps: installing ${need[*]}" >&2
    apt-get "${apt_wait[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_wait[@]}" install -y -qq "${need[@]}" >/dev/null
fi
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install -q --no-deps "$here"
"$venv/bin/pip" install -q pytest hypothesis
cd "$here"
# what the tests import must be Debian's, not something pip brought in
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
import msgpack, prctl, pyroute2, structlog
for mod in (msgpack, prctl, pyroute2, structlog):
    assert mod.__file__.startswith("/usr/lib/python3/dist-packages/"), mod.__file__
print("Debian's:", ", ".join(f"{d} {md.version(d)}" for d in
                              ("msgpack", "python-prctl", "pyroute2", "structlog")))
PY
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/unit "$@"
