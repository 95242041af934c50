"""smcroute.unprivileged.cmdline: glibc-style getopt, one option at a time."""

from __future__ import annotations

import itertools

import pytest
from smcroute.unprivileged import levels, log
from smcroute.unprivileged.cmdline import OptError, atoi, getopt
from smcroute.unprivileged.options import Exit, parse

OPTSTRING = "ab:c"


def run(argv: list[str], optstring: str = OPTSTRING,
        longopts: tuple[str, ...] = ()) -> tuple[list[tuple[str, str]], list[str]]:
    words: list[str] = []
    return list(getopt(argv, optstring, words, longopts)), words


@pytest.mark.parametrize(("argv", "opts", "words"), [
    ([], [], []),
    (["-a"], [("-a", "")], []),
    (["-a", "-c"], [("-a", ""), ("-c", "")], []),
    (["-ac"], [("-a", ""), ("-c", "")], []),
    (["-b", "x"], [("-b", "x")], []),
    (["-bx"], [("-b", "x")], []),
    (["-abx"], [("-a", ""), ("-b", "x")], []),
    (["-ab", "x", "-c"], [("-a", ""), ("-b", "x"), ("-c", "")], []),
    (["-bac"], [("-b", "ac")], []),  # the rest of the word is the value
    (["-b", "-a"], [("-b", "-a")], []),  # a value may look like an option
    (["-b", "--"], [("-b", "--")], []),
    (["-b", ""], [("-b", "")], []),  # an empty value is a value
    (["-b", "x", "-b", "y"], [("-b", "x"), ("-b", "y")], []),  # repeats are all reported
    (["w1", "-a", "w2", "-b", "v", "w3"], [("-a", ""), ("-b", "v")], ["w1", "w2", "w3"]),
    (["-"], [], ["-"]),  # "-" alone is a word
    (["", "-a"], [("-a", "")], [""]),
    (["--"], [], []),
    (["-a", "--", "-c", "w"], [("-a", "")], ["-c", "w"]),  # "--" ends the options
    (["w", "--", "--"], [], ["w", "--"]),
    (["-a", "--", "-b"], [("-a", "")], ["-b"]),
])
def test_getopt(argv: list[str], opts: list[tuple[str, str]], words: list[str]) -> None:
    assert run(argv) == (opts, words)


@pytest.mark.parametrize(("argv", "opt", "missing", "message"), [
    (["-x"], "x", False, "invalid option -- 'x'"),
    (["-ax"], "x", False, "invalid option -- 'x'"),
    (["-:"], ":", False, "invalid option -- ':'"),  # ":" marks arguments, it is no option
    (["-é"], "é", False, "invalid option -- 'é'"),
    (["-b"], "b", True, "option requires an argument -- 'b'"),
    (["-ab"], "b", True, "option requires an argument -- 'b'"),
    (["-a", "w", "-b"], "b", True, "option requires an argument -- 'b'"),
])
def test_getopt_errors(argv: list[str], opt: str, missing: bool, message: str) -> None:
    with pytest.raises(OptError) as info:
        run(argv)
    assert (info.value.opt, info.value.missing) == (opt, missing)
    assert info.value.message() == message


def test_getopt_goes_option_by_option() -> None:
    # The bad option raises only when the parse reaches it: what came
    # before has been handed over (and acted on) already.
    words: list[str] = []
    it = getopt(["w1", "-a", "-b", "v", "w2", "-x", "-c"], OPTSTRING, words)
    assert next(it) == ("-a", "")
    assert next(it) == ("-b", "v")
    assert words == ["w1"]
    with pytest.raises(OptError) as info:
        next(it)
    assert info.value.opt == "x"
    assert words == ["w1", "w2"]


def test_getopt_is_lazy_about_a_missing_argument_too() -> None:
    seen = list(itertools.islice(getopt(["-a", "-c", "-b"], OPTSTRING, []), 2))
    assert seen == [("-a", ""), ("-c", "")]


def test_getopt_without_long_options_refuses_double_dash_words() -> None:
    with pytest.raises(OptError) as info:
        run(["--foo"])
    assert info.value.message() == "unrecognized option '--foo'"


@pytest.mark.parametrize(("argv", "opts", "words"), [
    (["--rate=5"], [("--rate", "5")], []),
    (["--rate", "5", "w"], [("--rate", "5")], ["w"]),
    (["--rate="], [("--rate", "")], []),
    (["--rate", "-a"], [("--rate", "-a")], []),
    (["--verbose", "-a"], [("--verbose", ""), ("-a", "")], []),
    (["-a", "--rate=1", "--rate=2"], [("-a", ""), ("--rate", "1"), ("--rate", "2")], []),
    (["--", "--rate=1"], [], ["--rate=1"]),
])
def test_long_options(argv: list[str], opts: list[tuple[str, str]], words: list[str]) -> None:
    assert run(argv, longopts=("rate=", "verbose")) == (opts, words)


@pytest.mark.parametrize(("argv", "message"), [
    (["--nope"], "unrecognized option '--nope'"),
    (["--rat=1"], "unrecognized option '--rat'"),  # no abbreviations
    (["--rate"], "option '--rate' requires an argument"),
])
def test_long_option_errors(argv: list[str], message: str) -> None:
    with pytest.raises(OptError) as info:
        run(argv, longopts=("rate=", "verbose"))
    assert info.value.message() == message


def test_atoi_and_levels_are_shared() -> None:
    # log.py re-exports what levels.py defines; levels.py imports no structlog
    assert log.parse_level is levels.parse_level
    assert log.PRIORITY is levels.PRIORITY
    assert levels.PRIORITY == {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "error": 3,
                               "warning": 4, "warn": 4, "notice": 5, "info": 6, "debug": 7}
    assert atoi(" -12ab") == -12


# -- smcrouted options, option by option (SPEC 1.1) ------------------------------------------------


def status(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(Exit) as info:
        parse(argv)
    out, err = capsys.readouterr()
    return info.value.status, out, err


@pytest.mark.parametrize(("argv", "code", "stderr"), [
    (["-m", "1", "-x"], 1, "smcrouted: Invalid mrdisc announcement interval, 4-180.\n"),
    (["-x", "-m", "1"], 64, "smcrouted: invalid option -- 'x'\n"),
    (["-h", "-x"], 0, ""),
    (["-x", "-h"], 64, "smcrouted: invalid option -- 'x'\n"),
    (["-v", "-m", "1"], 0, ""),
    (["-m", "1", "-v"], 1, "smcrouted: Invalid mrdisc announcement interval, 4-180.\n"),
    (["-t", "-1", "-m", "1"], 64, "smcrouted: invalid table id -- '-1'\n"),
    (["-p", "no-such-user-xyz", "-x"], 1, None),
    (["-F", "/x.conf", "-f"], 64, "smcrouted: option requires an argument -- 'f'\n"),
    (["w", "-nh", "-x"], 0, ""),
])
def test_first_offending_option_decides(argv: list[str], code: int, stderr: str | None,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    got, out, err = status(argv, capsys)
    assert got == code
    if stderr is not None:
        assert err == stderr
    else:
        assert err.startswith("smcrouted: Invalid user:group argument")
    if code == 64 or argv[0] in ("-h", "w"):
        assert out.startswith("Usage:\n  smcrouted ")
    elif argv[0] == "-v":
        assert out.startswith("smcroute-py v")
    else:
        assert out == ""
