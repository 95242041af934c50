"""glibc-style getopt, one option at a time (shared by smcrouted and smcroutectl).

The standard library's getopt parses the whole command line before anything
acts, so "-h -x" fails where SMCRoute prints its help. This yields options in
order and raises only when the parse reaches the bad one; non-option words are
collected (GNU permutation) and "--" ends the options.
"""

from __future__ import annotations

from collections.abc import Iterator


class OptError(Exception):
    def __init__(self, opt: str, missing: bool) -> None:
        super().__init__(opt)
        self.opt = opt
        self.missing = missing

    def message(self) -> str:
        if self.missing:
            return f"option requires an argument -- '{self.opt}'"
        return f"invalid option -- '{self.opt}'"


def getopt(argv: list[str], optstring: str, words: list[str]) -> Iterator[tuple[str, str]]:
    """Yield ("-x", value) pairs in order; append non-option words to words."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            words.extend(argv[i:])
            return
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
