"""glibc-style getopt, one option at a time (shared by smcrouted and smcroutectl).

The standard library's getopt parses the whole command line before anything
acts, so "-h -x" fails where SMCRoute prints its help. This yields options in
order and raises only when the parse reaches the bad one; non-option words are
collected (GNU permutation) and "--" ends the options.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: smcroutectl starts faster without typing
if TYPE_CHECKING:
    from collections.abc import Iterator



class OptError(Exception):
    def __init__(self, opt: str, missing: bool, long: bool = False) -> None:
        super().__init__(opt)
        self.opt = opt
        self.missing = missing
        self.long = long

    def message(self) -> str:
        if self.long:  # glibc's getopt_long wording
            if self.missing:
                return f"option '{self.opt}' requires an argument"
            return f"unrecognized option '{self.opt}'"
        if self.missing:
            return f"option requires an argument -- '{self.opt}'"
        return f"invalid option -- '{self.opt}'"


def getopt(argv: list[str], optstring: str, words: list[str],
           longopts: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """Yield ("-x", value) pairs in order; append non-option words to words.

    longopts names our own extensions ("name=" takes a value), given as
    --name=value or --name value; SMCRoute's short options stay as they are.
    """
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            words.extend(argv[i:])
            return
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name in longopts and not eq:
                yield f"--{name}", ""
            elif f"{name}=" not in longopts:
                raise OptError(f"--{name}", missing=False, long=True)
            elif eq:
                yield f"--{name}", value
            elif i < len(argv):
                yield f"--{name}", argv[i]
                i += 1
            else:
                raise OptError(f"--{name}", missing=True, long=True)
            continue
        if not arg.startswith("-") or arg == "-":
            words.append(arg)
            continue
        pos = 1
        while pos < len(arg):
            ch = arg[pos]
            pos += 1
            spec = optstring.find(ch)
            if ch == ":" or spec < 0:
                raise OptError(ch, missing=False)
            if optstring[spec + 1:spec + 2] != ":":
                yield f"-{ch}", ""
                continue
            if pos < len(arg):
                yield f"-{ch}", arg[pos:]
            elif i < len(argv):
                yield f"-{ch}", argv[i]
                i += 1
            else:
                raise OptError(ch, missing=True)
            break


def atoi(text: str) -> int:
    """C atoi: optional sign and leading digits, 0 if none."""
    text = text.lstrip(" \t\n\r\v\f")
    sign, digits = 1, ""
    if text[:1] in "+-" and text[:1]:
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    for ch in text:
        if not ch.isdigit() or not ch.isascii():
            break
        digits += ch
    return sign * int(digits) if digits else 0
