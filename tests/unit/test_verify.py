"""smcrouted -F FILE (SPEC 1.3, adapted): check a configuration, change nothing.

The live interface table is replaced by a fixed one; output is captured.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from smcroute.unprivileged import smcrouted, verify
from smcroute.unprivileged.model import Diagnostic, Interface, Where
from smcroute.unprivileged.options import parse
from smcroute.unprivileged.verify import EX_CONFIG, check

IFS = {name: Interface(name, i + 1, name != "lo")
       for i, name in enumerate(["lo", "a1", "a2", "b1", "b2"])}


@pytest.fixture(autouse=True)
def interfaces(monkeypatch: pytest.MonkeyPatch) -> dict[str, Interface]:
    table = dict(IFS)
    monkeypatch.setattr(verify, "read_interfaces", lambda: table)
    return table


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    status = verify.verify(parse(list(argv)))
    out, err = capsys.readouterr()
    assert err == ""
    assert out == "" or out.endswith("\n")
    return status, out.splitlines()


def conf(tmp_path: Path, text: str, name: str = "smcroute.conf") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


CLEAN = """\
phyint a1 enable ttl-threshold 3
mroute from a1 source 10.0.0.1 group 225.1.2.3 to a2 b1
mroute from a2 group 225.1.2.0/24 to a1
mroute from b1 source 2001:db8::1 group ff05::1 to a+ b2
mroute from b+ group ff05::/16 to a+
"""


def test_clean_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = conf(tmp_path, CLEAN)
    assert run(capsys, "-F", path) == (0, [f"Verifying configuration file {path} ..."])


@pytest.mark.parametrize("level", ["notice", "warning", "err", "none", "0"])
def test_clean_file_quietly(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            level: str) -> None:
    path = conf(tmp_path, CLEAN)
    assert run(capsys, "-l", level, "-F", path) == (0, [])


def test_level_given_before_or_after_minus_f(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # SPEC 1.1: -l is applied after all options, wherever it stands
    path = conf(tmp_path, CLEAN)
    assert run(capsys, "-F", path, "-l", "notice") == (0, [])
    assert run(capsys, "-F", path, "-l", "debug") == (0, [
        f"Verifying configuration file {path} ..."])


# SPEC 1.3's example, with this system's interfaces (a3 and b4 do not exist here)
EXAMPLE = """\
phyint a1 enable
phyint a2 enable
phyint a3 enable
phyint

mroute from a1 source 10.0.0.1 group 225.1.2.3 to a2 a3
mroute from a3 group 225.1.2.3 to a2
mgroup from b4 group 225.1.2.3
"""


def test_spec_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = conf(tmp_path, EXAMPLE)
    assert run(capsys, "-l", "info", "-F", path) == (EX_CONFIG, [
        f"Verifying configuration file {path} ...",
        f"{path} line 3: phyint a3 does not exist (yet?) on this system",
        f"{path} line 4: phyint missing interface pattern",
        f"{path} line 6: mroute: outbound a3 is not a known phyint",
        "mroute from a3 group 225.1.2.3 pending: interface not available",
        "mgroup from b4 group 225.1.2.3 pending: interface not available",
        f"Parse error in {path}",
    ])
    assert EX_CONFIG == 78


def test_spec_example_at_other_levels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = conf(tmp_path, EXAMPLE)
    assert run(capsys, "-l", "err", "-F", path) == (EX_CONFIG, [])
    assert run(capsys, "-l", "none", "-F", path) == (EX_CONFIG, [])
    status, lines = run(capsys, "-l", "warning", "-F", path)
    assert status == EX_CONFIG
    assert lines == [
        f"{path} line 3: phyint a3 does not exist (yet?) on this system",
        f"{path} line 4: phyint missing interface pattern",
        f"{path} line 6: mroute: outbound a3 is not a known phyint",
        f"Parse error in {path}",
    ]
    status, lines = run(capsys, "-l", "notice", "-F", path)
    assert lines[-3:] == ["mroute from a3 group 225.1.2.3 pending: interface not available",
                          "mgroup from b4 group 225.1.2.3 pending: interface not available",
                          f"Parse error in {path}"]
    assert not any(line.startswith("Verifying") for line in lines)


def test_missing_inbound_is_only_a_note(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = conf(tmp_path, "mroute from zz0 group 225.1.2.3 to a1\n"
                          "mroute from zz+ source 10.0.0.1 group 225.1.2.4 to zz1\n")
    assert run(capsys, "-F", path) == (0, [
        f"Verifying configuration file {path} ...",
        "mroute from zz0 group 225.1.2.3 pending: interface not available",
        "mroute from zz+ group 225.1.2.4 pending: interface not available",
    ])


def test_missing_outbound_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = conf(tmp_path, "\n\nmroute from a1 group 225.1.2.3 to zz0 a2 zz+\n")
    assert run(capsys, "-F", path) == (EX_CONFIG, [
        f"Verifying configuration file {path} ...",
        f"{path} line 3: mroute: outbound zz0 is not a known phyint",
        f"{path} line 3: mroute: outbound zz+ is not a known phyint",
        f"Parse error in {path}",
    ])


@pytest.mark.parametrize(("text", "message"), [
    ("bogus a1", "Unknown command bogus, skipping."),
    ("phyint a1 ttl-threshold 0", "phyint a1 ttl 0 out of range (1-255)"),
    ("mroute from a1 source 10.0.0.1 group 10.1.2.3 to a2",
     "mroute: Invalid multicast group: 10.1.2.3, skipping line"),
    ("include", "include: missing file pattern"),
    ("phyint lo", "phyint lo is not multicast capable"),
])
def test_every_warning_fails_verification(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          text: str, message: str) -> None:
    path = conf(tmp_path, "phyint a1\n" + text + "\n")
    assert run(capsys, "-F", path) == (EX_CONFIG, [
        f"Verifying configuration file {path} ...",
        f"{path} line 2: {message}",
        f"Parse error in {path}",
    ])


def test_mgroup_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = conf(tmp_path, "mgroup from a1 group 225.1.2.3\n"
                          "ssmgroup from b+ source 2001:db8::1 group ff05::1\n"
                          "mgroup from zz0 group 225.1.2.4\n")
    assert run(capsys, "-F", path) == (0, [
        f"Verifying configuration file {path} ...",
        "mgroup from zz0 group 225.1.2.4 pending: interface not available",
    ])
    path = conf(tmp_path, "mgroup from a1 group 225.1.2.3\nmgroup from a1 group 225.1.2.3\n")
    status, lines = run(capsys, "-F", path)
    assert status == EX_CONFIG
    assert lines[1].startswith(f"{path} line 2: Already joined")


def test_syntax_errors_and_interface_problems_are_all_reported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # unlike the daemon, verification goes on after a syntax error
    path = conf(tmp_path, "phyint zz0\nmroute from a1\nmroute from a1 group 225.1.2.3 to zz1\n")
    assert run(capsys, "-F", path) == (EX_CONFIG, [
        f"Verifying configuration file {path} ...",
        f"{path} line 1: phyint zz0 does not exist (yet?) on this system",
        f"{path} line 2: mroute: missing multicast group, expected: group ADDR[/LEN]",
        f"{path} line 3: mroute: outbound zz1 is not a known phyint",
        f"Parse error in {path}",
    ])


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "nope.conf")
    status, lines = run(capsys, "-F", path)
    assert status == EX_CONFIG
    assert lines[:2] == [f"Verifying configuration file {path} ...",
                         f"Configuration file {path} does not exist"]
    assert lines[2:] in ([], [f"Parse error in {path}"])
    status, lines = run(capsys, "-l", "err", "-F", path)
    assert (status, lines) == (EX_CONFIG, [])


def test_directory_instead_of_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, lines = run(capsys, "-F", str(tmp_path))
    assert status == EX_CONFIG
    assert lines[1] == f"Failed opening {tmp_path}: is a directory"
    status, lines = run(capsys, "-l", "warning", "-F", str(tmp_path))
    assert lines[0] == f"Failed opening {tmp_path}: is a directory"


def test_errors_in_included_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inc = conf(tmp_path, "phyint a1\n\nmroute from a1\n", "conf.d/bad.conf")
    conf(tmp_path, "phyint a2\n", "conf.d/good.conf")
    path = conf(tmp_path, "phyint a1\ninclude conf.d/*.conf\n")
    assert run(capsys, "-F", path) == (EX_CONFIG, [
        f"Verifying configuration file {path} ...",
        f"{inc} line 3: mroute: missing multicast group, expected: group ADDR[/LEN]",
        f"Parse error in {path}",
    ])


def test_warnings_in_included_files_with_their_own_lines(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inc = conf(tmp_path, "\nphyint zz0\nmroute from a1 group 225.1.2.3 to zz1\n", "inc.conf")
    path = conf(tmp_path, "phyint a1\ninclude inc.conf\nphyint zz2\n")
    assert run(capsys, "-F", path) == (EX_CONFIG, [
        f"Verifying configuration file {path} ...",
        f"{inc} line 2: phyint zz0 does not exist (yet?) on this system",
        f"{inc} line 3: mroute: outbound zz1 is not a known phyint",
        f"{path} line 3: phyint zz2 does not exist (yet?) on this system",
        f"Parse error in {path}",
    ])


def test_include_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = conf(tmp_path, "phyint a1\ninclude smcroute.conf\n")
    status, lines = run(capsys, "-F", path)
    assert status == EX_CONFIG
    assert lines[1].startswith(f"{path} line 2: include loop: {path}")


def test_problems_are_reported_in_reading_order(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # a.conf is read before b.conf: its problem comes first, whether the
    # parser (b.conf: unknown command) or the engine (a.conf: no such
    # interface) found it
    a = conf(tmp_path, "phyint zz0\n", "a.conf")
    b = conf(tmp_path, "bogus\n", "b.conf")
    path = conf(tmp_path, "phyint zz1\ninclude a.conf\ninclude b.conf\n")
    assert run(capsys, "-F", path) == (EX_CONFIG, [
        f"Verifying configuration file {path} ...",
        f"{path} line 1: phyint zz1 does not exist (yet?) on this system",
        f"{a} line 1: phyint zz0 does not exist (yet?) on this system",
        f"{b} line 1: Unknown command bogus, skipping.",
        f"Parse error in {path}",
    ])


def test_no_vifs_option_is_honoured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # -N: a bare phyint disables; a route through it then lacks the OIF
    # only for this plan, which is still not an error
    path = conf(tmp_path, "mroute from a1 group 225.1.2.3 to a2\nphyint a2\n")
    assert run(capsys, "-N", "-F", path) == (0, [f"Verifying configuration file {path} ..."])


def test_check_returns_problems_and_notes(tmp_path: Path) -> None:
    path = conf(tmp_path, "bogus\nmroute from zz0 group 225.1.2.3\n")
    problems, notes = check(parse(["-F", path]))
    assert problems == [Diagnostic("Unknown command bogus, skipping.", Where(path, 1))]
    assert notes == ["mroute from zz0 group 225.1.2.3 pending: interface not available"]
    problems, notes = check(parse(["-F", str(tmp_path / "nope.conf")]))
    assert [(d.where, d.error) for d in problems] == [(None, True)]
    assert notes == []


def test_smcrouted_main_dispatches_verify_mode(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # no root needed, nothing started: the exit status is verify()'s
    good = conf(tmp_path, CLEAN)
    assert smcrouted.main(["-F", good]) == 0
    bad = conf(tmp_path, EXAMPLE, "bad.conf")
    assert smcrouted.main(["-l", "err", "-F", bad]) == EX_CONFIG
    out, err = capsys.readouterr()
    assert out == f"Verifying configuration file {good} ...\n"
    assert err == ""
