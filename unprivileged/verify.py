"""smcrouted -F FILE: check a configuration against this system, change nothing.

Every diagnostic, in the file or in what it includes, is printed as
"FILE line N: message"; errors, and interfaces that are missing or unusable,
make the exit status 78, as in SMCRoute (SPEC 1.3; smcroute.conf(5) has
the table). Lines waiting for a missing inbound interface are noted, not
problems; a missing outbound interface is one here (the daemon would
install the route without it and wait). Notes (info) are only printed.
"""

from __future__ import annotations

from smcroute.unprivileged import engine
from smcroute.unprivileged.config import read_config
from smcroute.unprivileged.core import pending_text
from smcroute.unprivileged.interfaces import read_interfaces
from smcroute.unprivileged.levels import PRIORITY, parse_level
from smcroute.unprivileged.model import INTERFACE, NOTE, Diagnostic
from smcroute.unprivileged.options import Options

EX_CONFIG = 78


def check(opts: Options) -> tuple[list[Diagnostic], list[str]]:
    """(problems, notes) for the configuration file of opts."""
    config = read_config(opts.conf_path)
    problems = list(config.diagnostics)
    notes: list[str] = []
    if config.errors and any(d.where is None for d in config.errors):
        return problems, notes  # the file itself could not be read
    target = engine.plan(config, read_interfaces(), {}, default_enable=not opts.no_vifs,
                         kernel_star_g=opts.kernel_star_g)
    problems += target.diagnostics
    for p in target.pending:
        if p.inbound:
            notes.append(pending_text(p))
        else:
            problems += [Diagnostic(f"mroute: outbound {name} is not a known phyint",
                                    p.rule.where, INTERFACE) for name in p.missing]
    problems.sort(key=lambda d: config.reading_order(d.where))  # as the parser read them
    return problems, notes


def verify(opts: Options) -> int:
    level = parse_level(opts.log_level) if opts.log_level else PRIORITY["info"]

    def say(prio: str, text: str) -> None:
        if PRIORITY[prio] <= level:
            print(text, flush=True)

    path = opts.conf_path
    say("info", f"Verifying configuration file {path} ...")
    problems, notes = check(opts)
    for d in problems:
        if d.kind == NOTE:
            say("info", str(d))
        else:
            say("notice" if d.where is None and "does not exist" in d.message else "warning",
                str(d))
    for note in notes:
        say("notice", note)
    if any(d.kind != NOTE for d in problems):
        say("warning", f"Parse error in {path}")
        return EX_CONFIG
    return 0
