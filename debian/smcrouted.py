#!/usr/bin/python3 -I
# smcrouted, from Debian's python3 and python3-* packages.
import sys

from smcroute.unprivileged.smcrouted import main

sys.exit(main())
