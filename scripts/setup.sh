#!/usr/bin/env bash
# Install what smcroute-py needs on a fresh Debian machine (run as root):
# system packages, then a virtual environment with the project in it.
#
# The venv lives outside the work tree and uses Debian's /usr/bin/python3 on
# purpose: after the daemon drops to -p USER, the interpreter and every module
# it may still import must be readable by that user (a checkout or a pyenv
# under /root is not).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SMCROUTE_VENV:-/opt/smcroute-py/venv}

need=()
# man-db/groff-base: man page checks; systemd: systemd-analyze for the unit's score;
# libseccomp2: the helper's seccomp filter (privileged/sandbox.py)
for pkg in libcap-dev python3-venv python3-dev gcc iproute2 man-db groff-base systemd \
           libseccomp2; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
# Another apt (unattended-upgrades on a fresh machine) may hold the dpkg
# lock: wait for it, up to 10 minutes, instead of failing at once.
apt_wait=(-o DPkg::Lock::Timeout=600 -o APT::Lock::Timeout=600)
if ((${#need[@]})); then
    echo "setup: installing ${need[*]}" >&2
    apt-get "${apt_wait[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_wait[@]}" install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating virtual environment $venv" >&2
    mkdir -p "$(dirname "$venv")"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
fi
# A plain (non-editable) install: the daemon runs from the venv only. No
# test tools in it: scripts/test.sh adds them where it runs the tests.
"$venv/bin/pip" install -q "$here"
chmod -R a+rX "$venv"
echo "$venv"
