#!/usr/bin/env bash
# Install smcroute-py as a system service (run as root), next to the pip
# install that scripts/setup.sh makes in /opt/smcroute-py/venv:
#   the systemd unit, sysusers.d and tmpfiles.d entries, /etc/default/smcroute,
#   an example /etc/smcroute.conf (only if there is none), the man pages, and
#   smcrouted/smcroutectl on PATH. PREFIX (default /usr/local) and DESTDIR
#   work as in "make install".
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SMCROUTE_VENV:-/opt/smcroute-py/venv}
prefix=${PREFIX:-/usr/local}
dest=${DESTDIR:-}

[ -x "$venv/bin/smcrouted" ] || bash "$here/scripts/setup.sh" >/dev/null
install -d "$dest/etc/systemd/system" "$dest/usr/lib/sysusers.d" "$dest/usr/lib/tmpfiles.d" \
    "$dest/etc/default" "$dest$prefix/sbin" "$dest$prefix/bin" \
    "$dest$prefix/share/man/man8" "$dest$prefix/share/man/man5"
install -m 0644 "$here/packaging/systemd/smcroute.service" "$dest/etc/systemd/system/"
install -m 0644 "$here/packaging/sysusers.d/smcroute.conf" "$dest/usr/lib/sysusers.d/smcroute.conf"
install -m 0644 "$here/packaging/tmpfiles.d/smcroute.conf" "$dest/usr/lib/tmpfiles.d/smcroute.conf"
[ -e "$dest/etc/default/smcroute" ] || install -m 0644 "$here/packaging/default/smcroute" "$dest/etc/default/smcroute"
[ -e "$dest/etc/smcroute.conf" ] || install -m 0644 "$here/packaging/smcroute.conf" "$dest/etc/smcroute.conf"
install -m 0644 "$here"/packaging/man/*.8 "$dest$prefix/share/man/man8/"
install -m 0644 "$here"/packaging/man/*.5 "$dest$prefix/share/man/man5/"
ln -sf "$venv/bin/smcrouted" "$dest$prefix/sbin/smcrouted"
ln -sf "$venv/bin/smcroutectl" "$dest$prefix/bin/smcroutectl"
if [ -z "$dest" ]; then
    command -v systemd-sysusers >/dev/null && systemd-sysusers smcroute.conf || true
    command -v systemd-tmpfiles >/dev/null && systemd-tmpfiles --create smcroute.conf || true
    [ -d /run/systemd/system ] && systemctl daemon-reload || true
fi
echo "installed; start with: systemctl enable --now smcroute"
