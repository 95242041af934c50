#!/usr/bin/python3 -I
# smcroutectl, from Debian's python3 and python3-* packages.
import sys

from smcroute.unprivileged.smcroutectl import main

sys.exit(main())
