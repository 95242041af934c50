"""The man pages render without warnings and document what the code does.

Each page goes through `man --warnings -l` as a user would read it (80
columns, UTF-8); the rendered text must list every smcrouted option, every
smcroutectl command and every smcroute.conf directive the code knows.
Needs man-db and groff-base (scripts/setup.sh installs them).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from smcroute.unprivileged import config, options, smcroutectl

MAN_DIR = Path(__file__).resolve().parent.parent / "packaging" / "man"
PAGES = ("smcrouted.8", "smcroutectl.8", "smcroute.conf.5")
WIDTH = 80

# SPEC 1.1: every option letter of SMCRoute's smcrouted.
SMCROUTED_LETTERS = "cdDefFhiIlmnNpPstuv"
SMCROUTED_LONG = ("--max-learned", "--max-learned-per-rule", "--upcall-rate", "--upcall-queue",
                  "--socket-group", "--readonly-group")
# SPEC 1.4: smcroutectl's options.
SMCROUTECTL_LETTERS = "bdhiIjptuv"
EXIT_CODES = ("0", "1", "64", "70", "71", "77", "78")


def _man() -> str:
    man = shutil.which("man")
    if man is None or shutil.which("groff") is None:
        pytest.fail("man or groff is not installed: run scripts/setup.sh (Debian packages"
                    " man-db and groff-base) before the tests", pytrace=False)
    return man


@functools.cache
def render(page: str) -> str:
    """The page as `man` shows it at 80 columns; fails on any warning."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MANOPT", "MAN_KEEP_FORMATTING", "MANROFFOPT", "GROFF_SGR")}
    env.update(MANWIDTH=str(WIDTH), LC_ALL="C.UTF-8", MANPAGER="cat", PAGER="cat")
    proc = subprocess.run([_man(), "--warnings", "-l", str(MAN_DIR / page)],
                          capture_output=True, text=True, env=env, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"man -l {page} exited {proc.returncode}: {proc.stderr}"
    assert proc.stderr == "", f"man --warnings -l {page} warned:\n{proc.stderr}"
    text = re.sub(r".\x08", "", proc.stdout)  # overstrike, should a man keep it
    # groff's UTF-8 hyphen and minus are ASCII in the page source
    return text.replace("\u2010", "-").replace("\u2212", "-")


def sections(text: str) -> dict[str, str]:
    """Top-level sections by heading (a line starting at column 0)."""
    out: dict[str, list[str]] = {}
    current = None
    lines = text.splitlines()
    for line in lines[1:-1]:  # skip the header and footer lines
        if line and not line[0].isspace():
            current = line.strip()
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return {name: "\n".join(body) for name, body in out.items()}


def tags(body: str) -> set[str]:
    """First words of the tagged paragraphs (.TP) of a section body."""
    return {m.group(1) for m in re.finditer(r"^ {7}(\S+)", body, re.MULTILINE)}


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("page", PAGES)
def test_renders_cleanly(page: str) -> None:
    text = render(page)
    too_wide = [line for line in text.splitlines() if len(line) > WIDTH]
    assert not too_wide, f"{page}: lines wider than {WIDTH} columns: {too_wide}"
    found = sections(text)
    for name in ("NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"):
        assert name in found, f"{page}: no {name} section"


def test_smcrouted_options() -> None:
    found = sections(render("smcrouted.8"))
    documented = tags(found["OPTIONS"])
    code_letters = {c for c in options.OPTSTRING if c != ":"}
    assert set(SMCROUTED_LETTERS) == code_letters, "SPEC 1.1 and options.py disagree"
    for letter in SMCROUTED_LETTERS:
        assert f"-{letter}" in documented, f"smcrouted.8 does not document -{letter}"
    code_long = {f"--{name.rstrip('=')}" for name in options.LONGOPTS}
    for name in sorted(code_long | set(SMCROUTED_LONG)):
        assert name in documented, f"smcrouted.8 does not document {name}"
    synopsis = words(found["SYNOPSIS"])
    for name in SMCROUTED_LONG:
        assert f"[{name} " in synopsis


def test_smcrouted_topics() -> None:
    text = render("smcrouted.8")
    found = sections(text)
    for name in ("PRIVILEGE SEPARATION", "CONTROL SOCKET", "ACTION SCRIPT", "BUDGETS",
                 "MULTICAST ROUTER DISCOVERY", "PENDING LINES AND INTERFACE HOTPLUG",
                 "VERIFYING A CONFIGURATION", "SIGNALS", "EXIT STATUS", "FILES",
                 "DIFFERENCES FROM SMCROUTE"):
        assert name in found, f"smcrouted.8 has no {name} section"
    assert set(EXIT_CODES) <= tags(found["EXIT STATUS"])
    assert {"/etc/smcroute.conf", "/var/run/NAME.pid", "/var/run/NAME.sock",
            "/etc/default/smcroute"} <= tags(found["FILES"])
    signals = words(found["SIGNALS"])
    for sig in ("SIGHUP", "SIGTERM", "SIGINT"):
        assert sig in signals
    privsep = words(found["PRIVILEGE SEPARATION"])
    for key in ("CAP_NET_ADMIN", "no_new_privs", "-p"):
        assert key in privsep
    socket_text = words(found["CONTROL SOCKET"])
    for key in ("0660", "0666", "--readonly-group", "--socket-group", "show"):
        assert key in socket_text
    script = words(found["ACTION SCRIPT"])
    for key in ("reload", "install", "source", "group"):
        assert re.search(rf"\b{key}\b", script)
    differences = words(found["DIFFERENCES FROM SMCROUTE"])
    for key in ("atomic", "include", "-l none", "WRONGVIF", "PID file"):
        assert key in differences


def test_smcroutectl_commands() -> None:
    found = sections(render("smcroutectl.8"))
    options_tags = tags(found["OPTIONS"])
    for letter in SMCROUTECTL_LETTERS:
        assert f"-{letter}" in options_tags, f"smcroutectl.8 does not document -{letter}"
    assert set(SMCROUTECTL_LETTERS) == {c for c in smcroutectl.OPTSTRING if c != ":"}
    commands = found["COMMANDS"]
    documented = tags(commands)
    for word, *_ in smcroutectl.COMMANDS:
        if word in smcroutectl.ALIASES:  # del, restart: named in their command's text
            assert re.search(rf"\b{word}\b", commands), f"smcroutectl.8 never names {word}"
        else:
            assert word in documented, f"smcroutectl.8 does not document {word}"
    output = words(found["OUTPUT"])
    for what in ("interfaces", "groups", "pending", "routes"):
        assert f"show {what}" in output
    assert {"0", "1"} <= tags(found["EXIT STATUS"])
    for name in ("BATCH MODE", "ACCESS", "FILES"):
        assert name in found


def test_smcroute_conf_directives() -> None:
    found = sections(render("smcroute.conf.5"))
    documented = tags(found["DIRECTIVES"])
    for directive in config.DIRECTIVES:
        assert directive in documented, f"smcroute.conf.5 does not document {directive}"
    syntax = words(found["SYNTAX"])
    for keyword in config.KEYWORDS:
        assert re.search(rf"(?<![\w-]){re.escape(keyword)}(?![\w-])", syntax), \
            f"smcroute.conf.5 does not name the keyword {keyword}"
    synopsis = words(found["SYNOPSIS"])
    for directive in config.DIRECTIVES:
        assert directive in synopsis
    assert "/etc/smcroute.conf" in tags(found["FILES"])
    assert "DIFFERENCES FROM SMCROUTE" in found
