#!/usr/bin/env bash
# Build the Debian package from this tree with Debian's own tools
# (debhelper, dh-python; debian/), in a scratch copy, and check it with
# lintian:   bash scripts/build-deb.sh [OUTDIR]   (default: ./dist)
# Prints the .deb's path last. Installs the build tools, and the package's
# runtime dependencies for trying it, if they are missing (run as root);
# with --deps-only it does only that (scripts/test.sh, before a VM with no
# network runs the test that builds the package).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
deps_only=
if [ "${1:-}" = --deps-only ]; then
    deps_only=1
    shift
fi
apt_wait=(-o DPkg::Lock::Timeout=600 -o APT::Lock::Timeout=600)
need=()
for pkg in debhelper dh-python python3-all lintian python3-prctl python3-msgpack \
           python3-pyroute2 python3-structlog libseccomp2; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
    echo "build-deb: installing ${need[*]}" >&2
    apt-get "${apt_wait[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_wait[@]}" install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null
fi
[ -n "$deps_only" ] && exit 0
out=$(mkdir -p "${1:-$here/dist}" && cd "${1:-$here/dist}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
# the tree as committed or added (no build output, no .git)
(cd "$here" && git ls-files -co --exclude-standard -z | tar --null -cf - -T -) | tar -xf - -C "$work/src"
if ! (cd "$work/src" && dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    echo "build-deb: dpkg-buildpackage failed" >&2
    exit 1
fi
deb=$(ls "$work"/*.deb)
# lintian: no error or warning (it warns about running as root: not a tag)
tags=$(lintian "$deb" 2>/dev/null | grep -E '^[EW]: ' || true)
if [ -n "$tags" ]; then
    echo "$tags" >&2
    echo "build-deb: lintian is not clean" >&2
    exit 1
fi
mv "$deb" "$out/"
echo "$out/$(basename "$deb")"
