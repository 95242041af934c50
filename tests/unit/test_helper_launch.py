"""How the controller starts the helper, and the helper's own command line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from smcroute.policy.limits import DEFAULT_MAX_MFC, MAX_MFC_CAP, MAX_TABLE
from smcroute.privileged.__main__ import UsageError, parse_args
from smcroute.unprivileged.options import OVERLOAD_STOPS, Options, User
from smcroute.unprivileged.smcrouted import (
    HELPER_BOOT,
    helper_command,
    helper_mfc_cap,
    helper_path,
)


def test_helper_command_is_isolated_without_site_and_names_its_path() -> None:
    cmd = helper_command(7, 3, User("nobody", 65534, 65534, (5, 6)), 1234)
    path = helper_path()
    assert cmd[:5] == [sys.executable, "-I", "-S", "-c", HELPER_BOOT]
    assert cmd[5:6 + len(path)] == [str(len(path)), *path]
    assert parse_args(cmd[6 + len(path):]) == {
        "fd": 7, "table": 3, "uid": 65534, "gid": 65534, "groups": (5, 6), "max-mfc": 1234,
        "rcvbuf": 768_000}


def test_the_boot_line_finds_the_helper_without_site() -> None:
    # what -I -S gives the helper: our packages and its dependencies, nothing else
    code = HELPER_BOOT.replace("from smcroute.privileged.__main__ import main;"
                               " sys.exit(main(sys.argv[1:]))",
                               "import smcroute.privileged.__main__, msgpack, prctl;"
                               " print('site' in sys.modules)")
    path = helper_path()
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(len(path)), *path],
                         capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout == "False\n"


def test_the_mfc_cap_holds_configured_routes_learned_routes_and_stop_filters() -> None:
    assert helper_mfc_cap(Options()) == DEFAULT_MAX_MFC + 2 * Options().max_learned + OVERLOAD_STOPS
    assert helper_mfc_cap(Options(max_learned=10)) == DEFAULT_MAX_MFC + 20 + OVERLOAD_STOPS
    # a --max-learned beyond what the helper takes is capped, not a helper usage error
    huge = helper_mfc_cap(Options(max_learned=10**12))
    assert huge == MAX_MFC_CAP
    assert parse_args(["--fd", "3", "--max-mfc", str(huge)])["max-mfc"] == huge


@pytest.mark.parametrize("argv", [
    [],
    ["--fd"],
    ["--fd", "3", "--fd", "4"],
    ["--fd", "x"],
    ["--fd", "-1"],
    ["--fd", "3", "--table", str(MAX_TABLE + 1)],  # once a crash as root: struct.error
    ["--fd", "3", "--table", "4294967296"],
    ["--fd", "3", "--uid", "5"],
    ["--fd", "3", "--max-mfc", "0"],
    ["--fd", "3", "--groups", "a,b"],
    ["--fd", "3", "--groups", "1,4294967295"],  # beyond gid_t: once an OverflowError as root
    ["--fd", "3", "--groups", "1", "--groups", "2"],
    ["-fd", "3"],
    ["--fd", "3", "--help", "1"],
])
def test_bad_helper_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv)


def test_helper_arguments_defaults() -> None:
    assert parse_args(["--fd", "3"]) == {"fd": 3, "table": 0, "uid": None, "gid": None,
                                         "groups": (), "max-mfc": DEFAULT_MAX_MFC,
                                         "rcvbuf": 768_000}


def test_the_upcall_queue_sizes_the_helpers_mroute_buffers() -> None:
    """--upcall-queue N: the kernel charges about 768 bytes a queued upcall
    and doubles the buffer it is given, so the helper asks for N * 384."""
    path = helper_path()
    for queue, rcvbuf in ((2000, 768_000), (512, 196_608), (64, 24_576),
                          (1_000_000, 384_000_000)):
        cmd = helper_command(7, 0, None, 1234, queue)
        assert parse_args(cmd[6 + len(path):])["rcvbuf"] == rcvbuf
    assert parse_args(helper_command(7, 0, None, 1234)[6 + len(path):])["rcvbuf"] == \
        parse_args(["--fd", "7"])["rcvbuf"]  # the helper's own default is the same
