"""smcroute.unprivileged.options (SPEC 1.1) and the -l level parser (SPEC 12.1)."""

from __future__ import annotations

import grp
import pwd

import pytest
from smcroute.unprivileged import options, texts
from smcroute.unprivileged.cmdline import atoi
from smcroute.unprivileged.levels import parse_level
from smcroute.unprivileged.options import LONGOPTS, Exit, Options, parse

VERSION_TEXT = """smcroute-py v0.1.0, a reimplementation of SMCRoute 2.6

Bug reports: to smcroute-py's maintainers (README.md, SECURITY.md),
             not to SMCRoute's tracker
SMCRoute:    https://github.com/troglobit/smcroute/
"""

USAGE_HEAD = ("Usage:\n"
              "  smcrouted [-hnNsv] [-c SEC] [-d SEC] [-e CMD] [-f FILE] [-i NAME] [-l LVL] \n")


# SPEC 1.5, verbatim (the first line ends with a space, the text with an empty line)
USAGE_DEFAULT = (
    "Usage:\n"
    "  smcrouted [-hnNsv] [-c SEC] [-d SEC] [-e CMD] [-f FILE] [-i NAME] [-l LVL] \n"
    "                     [-m SEC] [-P FILE] [-t ID] [-u FILE]\n"
    "\n"
    "Options:\n"
    "  -c SEC          Flush dynamic (*,G) multicast routes every SEC seconds,\n"
    "                  default 60 sec.  Useful when source/interface changes\n"
    "  -d SEC          Startup delay, useful for delaying interface probe at boot\n"
    "  -e CMD          Script or command to call on startup/reload when all routes\n"
    "                  have been installed, or when a (*,G) is installed\n"
    "  -f FILE         Configuration file, default use ident NAME: /etc/smcroute.conf\n"
    "  -F FILE         Check configuration file syntax, use -l to increase verbosity\n"
    "  -h              This help text\n"
    "  -i NAME         Identity for .conf/.pid/.sock file, and syslog, default: smcroute\n"
    "  -l LVL          Set log level: none, err, notice*, info, debug\n"
    "  -m SEC          Multicast router discovery, 4-180, default: 20 sec\n"
    "  -n              Run daemon in foreground, when started by systemd or finit\n"
    "  -N              No multicast VIFs/MIFs created by default.  Use with\n"
    "                  smcroute.conf `phyint enable` directive\n"
    "  -p USER[:GROUP] After initialization set UID and GID to USER and GROUP\n"
    "  -P FILE         Set daemon PID file name, with optional path.\n"
    "                  Default use ident NAME: /var/run/smcroute.pid\n"
    "  -s              Use syslog, default unless running in foreground, -n\n"
    "  -t ID           Set multicast routing table ID, default: 0\n"
    "  -u FILE         UNIX domain socket path, for use with smcroutectl.\n"
    "                  Default use ident NAME: /var/run/smcroute.sock\n"
    "  -v              Show program version and support information\n"
    "\n"
)


def exits(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(Exit) as info:
        parse(argv)
    out, err = capsys.readouterr()
    return info.value.status, out, err


def usage_paths(out: str) -> tuple[str, str, str, str]:
    lines = out.splitlines()
    conf = next(x for x in lines if x.startswith("  -f FILE")).rsplit(" ", 1)[1]
    ident = next(x for x in lines if x.startswith("  -i NAME")).rsplit(" ", 1)[1]
    i = next(n for n, x in enumerate(lines) if x.startswith("  -P FILE"))
    pid = lines[i + 1].rsplit(" ", 1)[1]
    j = next(n for n, x in enumerate(lines) if x.startswith("  -u FILE"))
    sock = lines[j + 1].rsplit(" ", 1)[1]
    return conf, ident, pid, sock


# -- defaults and values -----------------------------------------------------------------------


def test_defaults() -> None:
    opts = parse([])
    assert opts == Options()
    assert opts.cache_timeout == 60
    assert opts.mrdisc_interval == 20
    assert opts.table == 0
    assert opts.ident == "smcroute"
    assert opts.conf_path == "/etc/smcroute.conf"
    assert opts.pid_path == "/var/run/smcroute.pid"
    assert opts.sock_path == "/var/run/smcroute.sock"
    assert not opts.foreground and not opts.verify and not opts.no_vifs
    assert opts.user is None and opts.script is None and opts.log_level is None
    assert opts.log_to_syslog and not opts.log_to_stderr
    assert opts.extra == ()


def test_every_value_option() -> None:
    opts = parse(["-c", "30", "-d", "2", "-D", "5", "-e", "/bin/true", "-f", "/tmp/x.conf",
                  "-l", "debug", "-m", "4", "-P", "/tmp/x.pid", "-t", "7", "-u", "/tmp/x.sock",
                  "-n", "-N"])
    assert opts.cache_timeout == 30
    assert opts.startup_delay == 2
    assert opts.exit_delay == 5
    assert opts.script == "/bin/true"
    assert opts.conf_path == "/tmp/x.conf"
    assert opts.log_level == "debug"
    assert opts.mrdisc_interval == 4
    assert opts.pid_path == "/tmp/x.pid"
    assert opts.table == 7
    assert opts.sock_path == "/tmp/x.sock"
    assert opts.foreground and opts.no_vifs
    assert not opts.verify


def test_attached_and_grouped_options() -> None:
    opts = parse(["-nNifoo", "-c5"])
    assert opts.foreground and opts.no_vifs
    assert opts.ident == "foo"
    assert opts.cache_timeout == 5


def test_verify_mode() -> None:
    opts = parse(["-F", "/tmp/check.conf"])
    assert opts.verify
    assert opts.conf_path == "/tmp/check.conf"


def test_ident_alias() -> None:
    assert parse(["-I", "bar"]).ident == "bar"


def test_permutation_and_non_options_ignored() -> None:
    opts = parse(["foo", "-i", "bar", "baz", "-n", "qux"])
    assert opts.ident == "bar"
    assert opts.foreground
    assert opts.extra == ("foo", "baz", "qux")


def test_later_overrides_earlier() -> None:
    opts = parse(["-i", "a", "-f", "/a.conf", "-i", "b", "-f", "/b.conf", "-t", "1", "-t", "2",
                  "-m", "10", "-m", "11", "-c", "1", "-c", "2"])
    assert opts.ident == "b"
    assert opts.conf_path == "/b.conf"
    assert (opts.table, opts.mrdisc_interval, opts.cache_timeout) == (2, 11, 2)


def test_option_argument_may_look_like_an_option() -> None:
    assert parse(["-f", "-x"]).conf_path == "-x"
    assert parse(["-i", "-n"]).ident == "-n"
    assert not parse(["-i", "-n"]).foreground


def test_double_dash_ends_options() -> None:
    opts = parse(["-n", "--", "-x", "-i", "foo"])
    assert opts.foreground
    assert opts.ident == "smcroute"
    assert opts.extra == ("-x", "-i", "foo")


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("-5", -5), ("abc", 0), ("12x", 12),
                                                 (" 7", 7), ("+3", 3)])
def test_cache_timeout_is_atoi(value: str, expected: int) -> None:
    assert parse(["-c", value]).cache_timeout == expected


# -- derived paths -----------------------------------------------------------------------------


def test_paths_from_ident() -> None:
    opts = parse(["-i", "NAME"])
    assert opts.conf_path == "/etc/NAME.conf"
    assert opts.pid_path == "/var/run/NAME.pid"
    assert opts.sock_path == "/var/run/NAME.sock"


def test_paths_from_ident_whatever_the_order() -> None:
    opts = parse(["-f", "/x.conf", "-i", "NAME"])
    assert opts.conf_path == "/x.conf"
    assert opts.pid_path == "/var/run/NAME.pid"


@pytest.mark.parametrize(("value", "expected"), [
    ("foo", "/var/run/foo.pid"),
    ("foo.pid", "/var/run/foo.pid.pid"),
    ("sub/foo", "/var/run/sub/foo.pid"),
    ("/tmp/foo.pid", "/tmp/foo.pid"),
    ("/tmp/foo", "/tmp/foo"),
])
def test_pidfile_basename_or_path(value: str, expected: str) -> None:
    assert parse(["-i", "other", "-P", value]).pid_path == expected


def test_syslog_votes() -> None:
    # SPEC 1.1: -n adds a stderr copy, -s cancels it, in any order (SMCRoute's
    # counter starts at 1: -n decrements, -s increments, stderr when < 1).
    assert parse(["-n"]).log_to_stderr
    assert not parse(["-n", "-s"]).log_to_stderr
    assert not parse(["-s", "-n"]).log_to_stderr
    assert not parse(["-s"]).log_to_stderr
    assert parse(["-s"]).log_to_syslog
    assert parse(["-n", "-n", "-s"]).log_to_stderr


# -- -h and -v ---------------------------------------------------------------------------------


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = exits(["-h"], capsys)
    assert status == 0
    assert err == ""
    assert out.startswith(USAGE_HEAD)
    smcroute, ours = out[:len(USAGE_DEFAULT)], out[len(USAGE_DEFAULT):]
    # SMCRoute's text exactly (SPEC 1.2), then our long options
    assert smcroute.endswith("Show program version and support information\n\n")
    assert usage_paths(smcroute) == ("/etc/smcroute.conf", "smcroute", "/var/run/smcroute.pid",
                                     "/var/run/smcroute.sock")
    assert smcroute == USAGE_DEFAULT == texts.smcrouted_usage(
        "/etc/smcroute.conf", "smcroute", "/var/run/smcroute.pid", "/var/run/smcroute.sock")
    assert ours == texts.SMCROUTED_LONG_USAGE


def test_long_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = exits(["--help"], capsys)
    assert (status, err) == (0, "")
    assert out == USAGE_DEFAULT + texts.SMCROUTED_LONG_USAGE  # as -h
    for option in LONGOPTS:
        assert f"  --{option.rstrip('=')} " in out, option
    status, out, err = exits(["--version"], capsys)
    assert (status, out, err) == (0, texts.version_text(), "")


def test_help_shows_paths_seen_so_far(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = exits(["-i", "foo", "-h", "-i", "bar"], capsys)
    assert status == 0
    assert usage_paths(out) == ("/etc/foo.conf", "foo", "/var/run/foo.pid", "/var/run/foo.sock")
    status, out, _ = exits(["-f", "/x.conf", "-P", "p", "-u", "/s", "-h"], capsys)
    assert usage_paths(out) == ("/x.conf", "smcroute", "/var/run/p.pid", "/s")


def test_help_stops_before_later_options(capsys: pytest.CaptureFixture[str]) -> None:
    # glibc getopt hands options over one at a time: smcrouted prints the
    # usage and exits at -h, before it ever looks at what follows.
    for argv in (["-h", "-x"], ["-h", "-m", "1"], ["-h", "-f"], ["-h", "-t", "-1"]):
        status, out, err = exits(argv, capsys)
        assert (status, err) == (0, ""), argv
        assert out.startswith(USAGE_HEAD)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = exits(["-v"], capsys)
    assert (status, out, err) == (0, VERSION_TEXT, "")
    assert texts.version_text() == VERSION_TEXT
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert project["project"]["version"] == texts.VERSION
    status, out, _ = exits(["-i", "x", "-v", "-h"], capsys)
    assert (status, out) == (0, VERSION_TEXT)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("opt", ["x", "z", "S", "a", "1"])
def test_invalid_option(opt: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = exits(["-n", f"-{opt}"], capsys)
    assert status == 64
    assert err == f"smcrouted: invalid option -- '{opt}'\n"
    assert out.startswith(USAGE_HEAD)


@pytest.mark.parametrize("opt", list("cdDefFiIlmpPtu"))
def test_missing_argument(opt: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = exits(["-n", f"-{opt}"], capsys)
    assert status == 64
    assert err == f"smcrouted: option requires an argument -- '{opt}'\n"
    assert out.startswith(USAGE_HEAD)


def test_usage_after_error_shows_paths_seen_so_far(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = exits(["-i", "foo", "-x"], capsys)
    assert status == 64
    assert out.startswith(USAGE_HEAD)


@pytest.mark.parametrize("value", ["-1", "-100", "-2147483648",
                                   "2147483648", "4294967296", "99999999999999999999"])
def test_negative_or_too_large_table(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = exits(["-t", value], capsys)
    assert status == 64
    assert out.startswith(USAGE_HEAD)


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("1", 1), ("255", 255), ("x", 0),
                                                 ("3abc", 3), ("2147483647", 2**31 - 1)])
def test_table_values(value: str, expected: int) -> None:
    assert parse(["-t", value]).table == expected


@pytest.mark.parametrize("value", ["0", "3", "181", "1000", "-4", "abc", ""])
def test_mrdisc_interval_out_of_range(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = exits(["-m", value], capsys)
    assert status == 1
    assert err == "smcrouted: Invalid mrdisc announcement interval, 4-180.\n"
    assert out == ""


@pytest.mark.parametrize(("value", "expected"), [("4", 4), ("180", 180), ("20", 20),
                                                 ("30s", 30)])
def test_mrdisc_interval_in_range(value: str, expected: int) -> None:
    assert parse(["-m", value]).mrdisc_interval == expected


@pytest.mark.parametrize("value", ["no-such-user-xyz", "nobody:no-such-group-xyz",
                                   "no-such-user-xyz:root", ""])
def test_unknown_user_or_group(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = exits(["-p", value], capsys)
    assert status == 1
    assert err.startswith("smcrouted: Invalid user:group argument")
    assert err.endswith("\n") and err.count("\n") == 1
    assert out == ""


def test_user_nobody_resolves() -> None:
    pw = pwd.getpwnam("nobody")
    user = parse(["-p", "nobody"]).user
    assert user is not None
    assert (user.name, user.uid, user.gid) == ("nobody", pw.pw_uid, pw.pw_gid)
    assert pw.pw_gid in user.groups
    assert list(user.groups) == sorted(set(user.groups))


def test_user_with_group() -> None:
    group = grp.getgrgid(0).gr_name
    user = parse(["-p", f"nobody:{group}"]).user
    assert user is not None
    assert user.uid == pwd.getpwnam("nobody").pw_uid
    assert user.gid == 0
    assert 0 in user.groups


def test_exit_is_an_exception_with_status() -> None:
    exc = Exit(64)
    assert exc.status == 64
    assert options.EX_USAGE == 64
    assert options.OPTSTRING == "c:d:D:e:f:F:hI:i:l:m:nNp:P:st:u:v"


# -- log levels (SPEC 12.1, with "none" meaning nothing) -------------------------------------------


@pytest.mark.parametrize(("arg", "level"), [
    ("alert", 1), ("crit", 2), ("debug", 7), ("emerg", 0), ("err", 3), ("error", 3),
    ("info", 6), ("notice", 5), ("panic", 0), ("warn", 4), ("warning", 4),
    ("none", -1), ("n", -1), ("no", -1), ("non", -1),
    ("e", 0), ("em", 0), ("er", 3), ("w", 4), ("wa", 4), ("i", 6), ("d", 7), ("a", 1), ("c", 2),
    ("p", 0), ("not", 5), ("noti", 5),
    ("ERR", 3), ("Debug", 7), ("NOTICE", 5), ("None", -1), ("WARNING", 4), ("InFo", 6),
    # compared on min(len(name), len(arg)) characters: longer words match too
    ("errors", 3), ("debugging", 7), ("information", 6), ("warnings", 4), ("notices", 5),
    ("nonexistent", -1), ("alerting", 1),
    # no name matches: C atoi
    ("7", 7), ("0", 0), ("3", 3), ("-1", -1), ("42", 42), ("foo", 0), ("x", 0), ("5abc", 5),
    (" 6", 6), ("+2", 2),
])
def test_parse_level(arg: str, level: int) -> None:
    assert parse_level(arg) == level


def test_parse_level_empty_matches_the_first_name() -> None:
    # strncasecmp(name, "", 0) is a match: the first name in the list wins
    assert parse_level("") == 1


@pytest.mark.parametrize(("text", "value"), [
    ("", 0), ("0", 0), ("12", 12), ("-12", -12), ("+12", 12), ("  42", 42), ("\t\n\v\f\r 9", 9),
    ("12abc", 12), ("abc", 0), ("-", 0), ("+", 0), ("--1", 0), ("+-1", 0), ("1 2", 1),
    ("٣", 0), ("1٣", 1), ("0x10", 0), ("007", 7), ("1.9", 1), ("-0", 0),
])
def test_atoi(text: str, value: int) -> None:
    assert atoi(text) == value


# -- --upcall-queue --------------------------------------------------------------------------


def test_upcall_queue_default_and_value() -> None:
    assert parse([]).upcall_queue == 2000
    assert parse(["--upcall-queue", "2000"]).upcall_queue == 2000
    assert parse(["--upcall-queue=64"]).upcall_queue == 64


@pytest.mark.parametrize(("value", "why"), [
    ("0", "needs a positive integer, not '0'"), ("-5", "needs a positive integer, not '-5'"),
    ("x", "needs a positive integer, not 'x'"), ("1000001", "is at most 1000000, not '1000001'")])
def test_upcall_queue_out_of_range(value: str, why: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = exits(["--upcall-queue", value], capsys)
    assert status == 64
    assert f"--upcall-queue {why}" in err
