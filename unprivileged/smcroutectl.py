"""smcroutectl: the control client (SPEC 1.4-1.6).

This version knows SMCRoute's options and command words, prints help and
version; talking to the daemon over the control socket is not there yet,
and every daemon command says so (exit 1) instead of pretending.
"""

from __future__ import annotations

import sys

from smcroute.unprivileged import texts
from smcroute.unprivileged.cmdline import OptError, getopt

OPTSTRING = "bdhI:i:jptu:v"
COMMANDS = ("help", "version", "flush", "kill", "reload", "restart", "show", "add", "remove",
            "del", "join", "leave")


def command_word(word: str) -> str | None:
    """SMCRoute's abbreviation rule: first table row sharing min(len) chars."""
    for name in COMMANDS:
        n = min(len(name), len(word))
        if name[:n] == word[:n]:
            return name
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    words: list[str] = []
    try:
        flags = {flag for flag, _ in getopt(args, OPTSTRING, words)}
    except OptError as exc:
        print(f"smcroutectl: {exc.message()}", file=sys.stderr)
        sys.stdout.write(texts.SMCROUTECTL_USAGE)
        return 1
    if "-v" in flags:
        sys.stdout.write(texts.version_text())
        return 0
    help_flag = "-h" in flags
    for word in words:
        cmd = command_word(word)
        if cmd == "help":
            help_flag = True
            continue
        if cmd == "version":
            sys.stdout.write(texts.version_text())
            return 0
        if cmd is not None:
            break
    else:
        cmd = None
    if help_flag and cmd is None:
        sys.stdout.write(texts.SMCROUTECTL_USAGE)
        return 0
    print(f"smcroutectl: the control socket is not supported yet; cannot run"
          f" '{cmd or 'show'}'", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
