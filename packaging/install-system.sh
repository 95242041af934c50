#!/usr/bin/env bash
# Install smcroute-py as a system service (run as root), next to a pip
# install in SMCROUTE_VENV (/opt/smcroute-py/venv; scripts/setup.sh makes it):
#   the systemd unit (running that venv's smcrouted), sysusers.d and
#   tmpfiles.d entries under PREFIX/lib (systemd reads /usr/local/lib and
#   /usr/lib alike), /etc/default/smcroute, an example /etc/smcroute.conf
#   (only if there is none), the man pages, and smcrouted/smcroutectl on
#   PATH. PREFIX (default /usr/local) and DESTDIR work as in "make install".
# This file and what it installs ship in the wheel too (smcroute.packaging):
#   bash "$(VENV/bin/python -c 'import smcroute.packaging as p; print(p.__path__[0])')/install-system.sh"
set -euo pipefail
pkg=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)  # packaging/, in a checkout or a venv
venv=${SMCROUTE_VENV:-/opt/smcroute-py/venv}
prefix=${PREFIX:-/usr/local}
dest=${DESTDIR:-}

if [ ! -x "$venv/bin/smcrouted" ]; then
    if [ -f "$pkg/../scripts/setup.sh" ]; then  # a checkout: make the venv
        bash "$pkg/../scripts/setup.sh" >/dev/null
    else
        echo "install-system: no smcrouted in $venv (set SMCROUTE_VENV)" >&2
        exit 1
    fi
fi
install -d "$dest$prefix/lib/systemd/system" "$dest$prefix/lib/sysusers.d" "$dest$prefix/lib/tmpfiles.d" \
    "$dest/etc/default" "$dest$prefix/sbin" "$dest$prefix/bin" \
    "$dest$prefix/share/man/man8" "$dest$prefix/share/man/man5"
# the unit runs this venv's programs, wherever SMCROUTE_VENV put it
sed "s|/opt/smcroute-py/venv|$venv|g" "$pkg/systemd/smcroute.service" \
    > "$dest$prefix/lib/systemd/system/smcroute.service"
chmod 0644 "$dest$prefix/lib/systemd/system/smcroute.service"
install -m 0644 "$pkg/sysusers/smcroute.conf" "$dest$prefix/lib/sysusers.d/smcroute.conf"
install -m 0644 "$pkg/tmpfiles/smcroute.conf" "$dest$prefix/lib/tmpfiles.d/smcroute.conf"
[ -e "$dest/etc/default/smcroute" ] || install -m 0644 "$pkg/default/smcroute" "$dest/etc/default/smcroute"
[ -e "$dest/etc/smcroute.conf" ] || install -m 0644 "$pkg/smcroute.conf" "$dest/etc/smcroute.conf"
install -m 0644 "$pkg"/man/*.8 "$dest$prefix/share/man/man8/"
install -m 0644 "$pkg"/man/*.5 "$dest$prefix/share/man/man5/"
ln -sf "$venv/bin/smcrouted" "$dest$prefix/sbin/smcrouted"
ln -sf "$venv/bin/smcroutectl" "$dest$prefix/bin/smcroutectl"
if [ -z "$dest" ]; then
    command -v systemd-sysusers >/dev/null && systemd-sysusers smcroute.conf || true
    command -v systemd-tmpfiles >/dev/null && systemd-tmpfiles --create smcroute.conf || true
    [ -d /run/systemd/system ] && systemctl daemon-reload || true
fi
echo "installed; start with: systemctl enable --now smcroute"
