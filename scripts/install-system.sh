#!/usr/bin/env bash
# Install smcroute-py as a system service: see packaging/install-system.sh.
exec bash "$(dirname "${BASH_SOURCE[0]}")/../packaging/install-system.sh" "$@"
