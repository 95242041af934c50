"""smcroute.unprivileged.config: include PATTERN (SPEC 2.9, adapted).

Deliberate differences from SMCRoute: relative patterns are relative to the
including file (not the daemon's cwd); errors inside included files are
errors of the whole configuration; loops and nesting deeper than
MAX_INCLUDE_DEPTH are errors on the include line instead of a crash.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smcroute.unprivileged import config as config_module
from smcroute.unprivileged.config import MAX_INCLUDE_DEPTH, parse_text, read_config
from smcroute.unprivileged.model import Config, Diagnostic, Mgroup, Mroute, Phyint, Where


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def places(config: Config) -> list[tuple[str, int, str]]:
    """(base name of the file, line, interface) of every directive, in order."""
    out = []
    for d in config.directives:
        name = d.pattern if isinstance(d, Phyint) else d.iif
        out.append((os.path.basename(d.where.file), d.where.line, name))
    return out


def diags(config: Config) -> list[tuple[str, int, bool, str]]:
    return [(os.path.basename(d.where.file) if d.where else "", d.where.line if d.where else 0,
             d.error, d.message) for d in config.diagnostics]


# -- what gets read, and in which order ----------------------------------------------------------


def test_include_reads_the_file_in_place(tmp_path: Path) -> None:
    write(tmp_path / "extra.conf", "phyint b1\nphyint b2\n")
    main = write(tmp_path / "main.conf", "phyint a1\ninclude extra.conf\nphyint a2\n")
    config = read_config(str(main))
    assert config.diagnostics == ()
    assert config.directives == (
        Phyint(Where(str(main), 1), "a1", None),
        Phyint(Where(str(tmp_path / "extra.conf"), 1), "b1", None),
        Phyint(Where(str(tmp_path / "extra.conf"), 2), "b2", None),
        Phyint(Where(str(main), 3), "a2", None),
    )


def test_matches_are_read_in_sorted_byte_order(tmp_path: Path) -> None:
    names = ["b.conf", "a.conf", "B.conf", "_x.conf", "10.conf", "9.conf", "é.conf", "a0.conf"]
    for n, name in enumerate(names):
        write(tmp_path / "d" / name, f"phyint i{n}\n")
    write(tmp_path / "d" / "skip.txt", "phyint nope\n")
    write(tmp_path / "d" / ".hidden.conf", "phyint nope\n")  # glob(3): * skips dot files
    main = write(tmp_path / "main.conf", "include d/*.conf\n")
    config = read_config(str(main))
    assert config.diagnostics == ()
    read = [os.path.basename(d.where.file) for d in config.directives]
    assert read == sorted(names, key=lambda s: s.encode())
    assert read == ["10.conf", "9.conf", "B.conf", "_x.conf", "a.conf", "a0.conf", "b.conf",
                    "é.conf"]


def test_glob_patterns(tmp_path: Path) -> None:
    for name in ("a.conf", "b.conf", "c.conf", "ab.conf"):
        write(tmp_path / name, f"phyint {name[:-5]}\n")
    for pattern, expected in [
        ("?.conf", ["a", "b", "c"]),
        ("[ab].conf", ["a", "b"]),
        ("[!a]*.conf", ["b", "c"]),
        ("a*", ["a", "ab"]),
        ("{a,b}.conf", []),  # no brace expansion
        ("~/a.conf", []),  # no tilde expansion
        ("nothing*", []),
    ]:
        config = parse_text(f"include {pattern}\n", str(tmp_path / "main.conf"))
        assert config.diagnostics == (), pattern
        assert [d.pattern for d in config.directives] == expected, pattern  # type: ignore


def test_relative_pattern_is_relative_to_the_including_file(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    write(tmp_path / "etc" / "sub" / "x.conf", "phyint right\n")
    write(tmp_path / "etc" / "sub" / "y.conf", "include x.conf\n")  # relative to sub/
    write(tmp_path / "cwd" / "sub" / "x.conf", "phyint wrong\n")
    main = write(tmp_path / "etc" / "main.conf", "include sub/x.conf\ninclude sub/y.conf\n")
    monkeypatch.chdir(tmp_path / "cwd")
    config = read_config(str(main))
    assert config.diagnostics == ()
    assert [d.pattern for d in config.directives] == ["right", "right"]  # type: ignore
    assert [d.where for d in config.directives] == [
        Where(str(tmp_path / "etc" / "sub" / "x.conf"), 1)] * 2


@pytest.mark.parametrize("dirname", ["g[1]", "h*", "q?", "a[!x]b"])
def test_relative_pattern_in_a_directory_with_glob_characters(tmp_path: Path,
                                                              dirname: str) -> None:
    # Only the pattern is a pattern: the including file's directory is a
    # plain path, whatever characters its name has.
    right = write(tmp_path / dirname / "inc.conf", "phyint right\n")
    for decoy in ("g1", "hx", "qq", "acb"):
        write(tmp_path / decoy / "inc.conf", "phyint wrong\n")
    main = write(tmp_path / dirname / "main.conf", "include inc.conf\ninclude i*.conf\n")
    config = read_config(str(main))
    assert config.diagnostics == ()
    assert [d.where for d in config.directives] == [Where(str(right), 1)] * 2


def test_relative_top_level_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "conf" / "inc.conf", "phyint b1\n")
    write(tmp_path / "conf" / "main.conf", "include inc.conf\n")
    monkeypatch.chdir(tmp_path)
    config = read_config("conf/main.conf")
    assert config.diagnostics == ()
    assert config.directives == (Phyint(Where("conf/inc.conf", 1), "b1", None),)
    monkeypatch.chdir(tmp_path / "conf")
    config = read_config("main.conf")
    assert config.directives == (Phyint(Where("inc.conf", 1), "b1", None),)


def test_absolute_pattern(tmp_path: Path) -> None:
    inc = write(tmp_path / "a" / "inc.conf", "phyint b1\n")
    config = parse_text(f"include {tmp_path}/a/*.conf\n", "/nonexistent/main.conf")
    assert config.diagnostics == ()
    assert config.directives == (Phyint(Where(str(inc), 1), "b1", None),)


def test_parse_text_follows_includes_relative_to_its_filename(tmp_path: Path) -> None:
    write(tmp_path / "inc.conf", "mroute from a1 group 225.1.2.3 to a2\n")
    config = parse_text("phyint a1\ninclude inc.conf\n", str(tmp_path / "never-written.conf"))
    assert config.diagnostics == ()
    assert places(config) == [("never-written.conf", 1, "a1"), ("inc.conf", 1, "a1")]
    assert isinstance(config.directives[1], Mroute)


def test_include_prefix_keyword_and_extra_words(tmp_path: Path) -> None:
    write(tmp_path / "inc.conf", "phyint b1\n")
    config = parse_text("includes inc.conf\ninclude\tinc.conf and more words\n"
                        "include inc.conf # comment\n", str(tmp_path / "main.conf"))
    assert config.diagnostics == ()
    assert [d.where.line for d in config.directives] == [1, 1, 1]


def test_every_directive_kind_in_an_included_file(tmp_path: Path) -> None:
    inc = write(tmp_path / "inc.conf", "\n".join([
        "phyint a1 enable",
        "mroute from a1 source 10.0.0.1 group 225.1.2.3 to a2",
        "mroute from a1 group 225.1.2.0/24 to a2",
        "mgroup from a1 group 225.1.2.3",
        "ssmgroup from a1 source 10.0.0.1 group 225.1.2.4",
    ]))
    config = parse_text("include inc.conf", str(tmp_path / "main.conf"))
    assert config.diagnostics == ()
    assert [type(d) for d in config.directives] == [Phyint, Mroute, Mroute, Mgroup, Mgroup]
    assert [d.where for d in config.directives] == [Where(str(inc), n) for n in range(1, 6)]


def test_the_same_file_twice_is_read_twice(tmp_path: Path) -> None:
    # not a loop: neither read is inside the other (duplicates merge later)
    write(tmp_path / "c.conf", "phyint c\n")
    write(tmp_path / "a.conf", "include c.conf\n")
    write(tmp_path / "b.conf", "include c.conf\n")
    main = write(tmp_path / "main.conf", "include c.conf\ninclude c.conf\ninclude [ab].conf\n")
    config = read_config(str(main))
    assert config.diagnostics == ()
    assert [d.pattern for d in config.directives] == ["c"] * 4  # type: ignore[union-attr]


def test_include_without_a_match_is_nothing(tmp_path: Path) -> None:
    main = write(tmp_path / "main.conf", "include none/*.conf\ninclude missing.conf*\n"
                                         "include /nonexistent-smcroute/x.conf\n")
    assert read_config(str(main)) == Config()


def test_include_without_pattern_is_an_error(tmp_path: Path) -> None:
    main = write(tmp_path / "main.conf", "phyint a1\ninclude\ninclude #x.conf\n")
    config = read_config(str(main))
    assert diags(config) == [("main.conf", 2, True, "include: missing file pattern"),
                             ("main.conf", 3, True, "include: missing file pattern")]
    assert len(config.errors) == 2


# -- errors inside included files ------------------------------------------------------------


def test_diagnostics_name_the_included_file_and_its_line(tmp_path: Path) -> None:
    write(tmp_path / "inc" / "a.conf", "phyint a1\nbogus\n")
    write(tmp_path / "inc" / "b.conf", "\n\nmroute from a1\nphyint\n")
    main = write(tmp_path / "main.conf", "include inc/*.conf\nmroute from a1 group 10.1.2.3\n")
    config = read_config(str(main))
    assert diags(config) == [
        ("a.conf", 2, True, "Unknown command bogus, skipping."),
        ("b.conf", 3, True, "mroute: missing multicast group, expected: group ADDR[/LEN]"),
        ("b.conf", 4, True, "phyint missing interface pattern"),
        ("main.conf", 2, True, "mroute: Invalid multicast group: 10.1.2.3, skipping line"),
    ]
    assert config.diagnostics[1].where == Where(str(tmp_path / "inc" / "b.conf"), 3)
    # an error inside an included file is an error of the whole configuration
    assert config.errors[1].where == Where(str(tmp_path / "inc" / "b.conf"), 3)
    assert str(config.errors[1]) == (f"{tmp_path}/inc/b.conf line 3: mroute: missing"
                                     " multicast group, expected: group ADDR[/LEN]")


def test_error_in_a_deeply_included_file(tmp_path: Path) -> None:
    write(tmp_path / "a.conf", "include b.conf\n")
    write(tmp_path / "b.conf", "phyint ok\ninclude c.conf\n")
    write(tmp_path / "c.conf", "# nothing\nmroute from a1 source 10.0.0.1 group 225.1.2.3 to " +
          " ".join(["a2"] * 33) + "\n")
    config = read_config(str(tmp_path / "a.conf"))
    assert [(os.path.basename(d.where.file), d.where.line) for d in config.errors] == [  # type: ignore
        ("c.conf", 2)]
    assert "at most 32" in config.errors[0].message


def test_self_include_is_an_error_on_the_include_line(tmp_path: Path) -> None:
    main = write(tmp_path / "main.conf", "phyint a1\ninclude main.conf\nphyint a2\n")
    config = read_config(str(main))
    assert [d.pattern for d in config.directives] == ["a1", "a2"]  # type: ignore[union-attr]
    assert len(config.diagnostics) == 1
    d = config.diagnostics[0]
    assert d.error and d.where == Where(str(main), 2)
    assert str(main) in d.message and "loop" in d.message


def test_self_include_through_a_glob(tmp_path: Path) -> None:
    write(tmp_path / "a.conf", "phyint a\n")
    main = write(tmp_path / "main.conf", "include *.conf\n")
    config = read_config(str(main))
    assert [d.pattern for d in config.directives] == ["a"]  # type: ignore[union-attr]
    assert [(d.where, d.error) for d in config.diagnostics] == [(Where(str(main), 1), True)]
    assert str(main) in config.diagnostics[0].message


def test_include_loop_between_two_files(tmp_path: Path) -> None:
    a = write(tmp_path / "a.conf", "phyint a\ninclude b.conf\n")
    b = write(tmp_path / "b.conf", "phyint b\ninclude a.conf\n")
    config = read_config(str(a))
    assert [d.pattern for d in config.directives] == ["a", "b"]  # type: ignore[union-attr]
    assert len(config.diagnostics) == 1
    d = config.diagnostics[0]
    assert d.error and d.where == Where(str(b), 2)
    assert str(a) in d.message and "loop" in d.message


def test_include_loop_through_another_spelling(tmp_path: Path) -> None:
    # the guard compares real paths: "./sub/../main.conf" and a symlink are main.conf
    main = write(tmp_path / "main.conf", "include sub/x.conf\ninclude link.conf\n")
    write(tmp_path / "sub" / "x.conf", "include ../sub/../main.conf\n")
    (tmp_path / "link.conf").symlink_to(main)
    config = read_config(str(main))
    assert config.directives == ()
    assert [(os.path.basename(d.where.file), d.where.line, d.error)  # type: ignore[union-attr]
            for d in config.diagnostics] == [("x.conf", 1, True), ("main.conf", 2, True)]
    assert all("loop" in d.message for d in config.diagnostics)
    assert f"{tmp_path}/sub/../sub/../main.conf" in config.diagnostics[0].message
    assert f"{tmp_path}/link.conf" in config.diagnostics[1].message


def test_parse_text_self_include_is_a_loop(tmp_path: Path) -> None:
    # the text stands for its filename, so including that file is a loop too
    write(tmp_path / "main.conf", "phyint from-disk\n")
    config = parse_text("include main.conf\n", str(tmp_path / "main.conf"))
    assert config.directives == ()
    assert [(d.where, d.error) for d in config.diagnostics] == [
        (Where(str(tmp_path / "main.conf"), 1), True)]


def chain(tmp_path: Path, n: int) -> Path:
    """f0.conf includes f1.conf ... includes f{n-1}.conf; each has one phyint."""
    for i in range(n):
        write(tmp_path / f"f{i}.conf",
              f"phyint i{i}\n" + (f"include f{i + 1}.conf\n" if i < n - 1 else ""))
    return tmp_path / "f0.conf"


def test_nesting_up_to_the_limit_is_fine(tmp_path: Path) -> None:
    assert MAX_INCLUDE_DEPTH == 16
    config = read_config(str(chain(tmp_path, MAX_INCLUDE_DEPTH)))
    assert config.diagnostics == ()
    assert len(config.directives) == MAX_INCLUDE_DEPTH


def test_nesting_deeper_than_the_limit_is_an_error(tmp_path: Path) -> None:
    config = read_config(str(chain(tmp_path, MAX_INCLUDE_DEPTH + 5)))
    assert len(config.directives) == MAX_INCLUDE_DEPTH  # f0 .. f15 are read
    assert len(config.diagnostics) == 1
    d = config.diagnostics[0]
    assert d.error
    last = MAX_INCLUDE_DEPTH - 1
    assert d.where == Where(str(tmp_path / f"f{last}.conf"), 2)  # the include line
    assert str(tmp_path / f"f{last + 1}.conf") in d.message
    assert str(MAX_INCLUDE_DEPTH) in d.message


def test_include_of_a_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "d.conf").mkdir()
    main = write(tmp_path / "main.conf", "phyint a1\ninclude d*.conf\n")
    config = read_config(str(main))
    assert [d.pattern for d in config.directives] == ["a1"]  # type: ignore[union-attr]
    assert [(d.where, d.error, d.message) for d in config.diagnostics] == [
        (Where(str(main), 2), True, f"Failed opening {tmp_path}/d.conf: is a directory")]


def test_include_of_a_dangling_symlink_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "gone.conf").symlink_to(tmp_path / "nowhere")
    main = write(tmp_path / "main.conf", "\ninclude gone.conf\n")
    config = read_config(str(main))
    assert [(d.where, d.error, d.message) for d in config.diagnostics] == [
        (Where(str(main), 2), True, f"Configuration file {tmp_path}/gone.conf does not exist")]


def test_unreadable_included_file_is_an_error(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # root reads every file, so the refusal is simulated
    secret = write(tmp_path / "secret.conf", "phyint a1\n")
    main = write(tmp_path / "main.conf", "phyint a0\ninclude secret.conf\n")
    real_open = os.open

    def refusing_open(path: str, *args: Any, **kw: Any) -> int:
        if path == str(secret):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, *args, **kw)

    monkeypatch.setattr(config_module.os, "open", refusing_open)
    config = read_config(str(main))
    assert [d.pattern for d in config.directives] == ["a0"]  # type: ignore[union-attr]
    assert [(d.where, d.error, d.message) for d in config.diagnostics] == [
        (Where(str(main), 2), True, f"Failed opening {secret}: Permission denied")]


def test_non_utf8_included_file_is_an_error_at_its_line(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.conf", b"phyint b1\n\nphyint caf\xe9\n")
    main = write(tmp_path / "main.conf", "phyint a1\ninclude bad.conf\nphyint a2\n")
    config = read_config(str(main))
    assert [d.pattern for d in config.directives] == ["a1", "a2"]  # type: ignore[union-attr]
    assert [(d.where, d.error) for d in config.diagnostics] == [(Where(str(bad), 3), True)]


def test_oversized_included_file_is_an_error(tmp_path: Path) -> None:
    big = tmp_path / "big.conf"
    with open(big, "wb") as f:
        f.truncate(config_module.MAX_BYTES + 1)  # sparse: cheap to make
    main = write(tmp_path / "main.conf", "include big.conf\n")
    config = read_config(str(main))
    assert [(d.where, d.error) for d in config.diagnostics] == [(Where(str(main), 1), True)]
    assert str(big) in config.diagnostics[0].message


def test_unreadable_top_level_file_has_no_line(tmp_path: Path) -> None:
    for path, message in [
        (tmp_path / "nope.conf", f"Configuration file {tmp_path}/nope.conf does not exist"),
        (tmp_path, f"Failed opening {tmp_path}: is a directory"),
    ]:
        config = read_config(str(path))
        assert config.directives == ()
        assert config.diagnostics == (Diagnostic(message, None),)
        assert str(config.diagnostics[0]) == message


# -- property: random trees of files including each other -----------------------------------------

NAMES = ["main.conf", "a.conf", "b.conf", "sub/c.conf", "sub/d.conf", "dir.conf"]
PATTERNS = ["*.conf", "a.conf", "b*", "sub/*.conf", "sub/c.conf", "../*.conf", "main.conf",
            "dir.conf", "none*.conf", "/nonexistent-smcroute/*", "[ab].conf", "*", "sub/../a.conf",
            "link.conf", "", "#"]
LINES = ["phyint a1 enable", "phyint", "bogus", "mroute from a1 group 225.1.2.3 to a2",
         "mroute from a1 source 10.0.0.1 group 225.1.2.3 to a2 a3", "mgroup from a1 group x",
         "ssmgroup from a1 group 225.1.2.3", "mroute from a1", "", "# comment", "\r",
         "phyint a1 ttl-threshold 0", "mroute from a1 source 10.0.0.1 group ff05::1"]

include_line = st.sampled_from(PATTERNS).map(lambda p: f"include {p}")
plain_line = st.sampled_from(LINES) | st.text(max_size=30)
file_text = st.lists(include_line | plain_line, max_size=6).map("\n".join)
file_bytes = st.binary(max_size=40) | st.lists(include_line, max_size=3).map(
    lambda lines: ("\n".join(lines) + "\n").encode() + b"\xff")


def check_tree(root: str, top: str, files: dict[str, str | bytes]) -> None:
    config = read_config(top)
    texts = {os.path.realpath(os.path.join(root, name)): data for name, data in files.items()}

    def lines_of(path: str) -> int:
        data = texts[os.path.realpath(path)]
        return (data.count(b"\n") if isinstance(data, bytes) else data.count("\n")) + 1

    for d in config.diagnostics:
        assert isinstance(d.message, str) and d.message
        if d.where is None:  # only the top-level file itself can fail without a line
            assert d.error
            assert config.diagnostics == (d,) and config.directives == ()
            assert os.path.realpath(top) not in texts or os.path.isdir(top)
            continue
        assert os.path.realpath(d.where.file) in texts, d
        assert 1 <= d.where.line <= lines_of(d.where.file), d
    for directive in config.directives:
        assert os.path.realpath(directive.where.file) in texts
        assert 1 <= directive.where.line <= lines_of(directive.where.file)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(NAMES), file_text | file_bytes, max_size=len(NAMES)),
       st.sampled_from(["main.conf", "a.conf", "sub/c.conf", "missing.conf", "dir.conf"]),
       st.booleans())
def test_property_include_trees(files: dict[str, str | bytes], top: str, link: bool) -> None:
    # the tree one level down in a directory of our own: "include ../*.conf"
    # must not see whatever *.conf files lie in /tmp
    with tempfile.TemporaryDirectory() as outer:
        root = os.path.join(outer, "tree")
        os.makedirs(os.path.join(root, "sub"))
        written = {}
        for name, data in files.items():
            path = os.path.join(root, name)
            if name == "dir.conf":
                os.mkdir(path)  # a directory that globs match
                continue
            with open(path, "wb") as f:
                f.write(data if isinstance(data, bytes) else data.encode())
            written[name] = data
        if link:
            os.symlink("main.conf", os.path.join(root, "link.conf"))
            if "main.conf" in written:
                written["link.conf"] = written["main.conf"]
        check_tree(root, os.path.join(root, top), written)
