#!/usr/bin/env python3
"""Benchmark smcroutectl: per-command wall time, and a 2000-line batch.

Run as root, from the project venv:

    /opt/smcroute-py/venv/bin/python bench/bench_smcroutectl.py [--runs 50] [--batch 2000]

It builds its own namespaces (router R: one inbound and three outbound
veths, their peers in H; no traffic), starts smcrouted in R (with this
process switched into R by setns, so "ip netns exec" is not measured), and
runs smcroutectl from the initial namespace over the daemon's socket (a
path: reachable from any network namespace).

  (a) wall time of one smcroutectl run (fork, exec, interpreter start-up,
      connect, request, reply, exit), median of --runs: "version" (no
      daemon), "show", "add" and "remove" of an (S,G) (alternating, so each
      changes the kernel), next to "python -I -c pass" for /usr/bin/python3,
      the venv's python, and "python3" as found on PATH (maybe a pyenv shim:
      a shell script, much slower). Target: smcroutectl show <= 1.5 x
      /usr/bin/python3 -I -c pass.
      Also: the modules smcroutectl's process imports (none of asyncio,
      pyroute2, structlog may be among them), from a real "show" run.
  (b) smcroutectl -b with --batch "add" lines of distinct (S,G): from
      spawning smcroutectl to its exit; then all of them are checked to be
      in the kernel MFC (/proc/PID/net/ip_mr_cache of the daemon), and the
      same for a batch of "remove" lines (MFC back to what it was). Target
      <= 0.2 s (C SMCRoute: 0.37 s).

Everything created (namespaces, processes, temporary files) is removed on
exit, also on failure or Ctrl-C; processes are stopped by PID only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: sys.path[0] already

from common import (
    IN_IF,
    OUT_IFS,
    BenchError,
    Smcrouted,
    Workspace,
    build,
    inside,
    mr_cache_word,
    raise_on_signals,
    workspace,
)
from netns import Netns

VENV_BIN = Path(sys.executable).parent
SRC = "10.0.1.2"  # H's address on the inbound link
SYSTEM_PYTHON = "/usr/bin/python3"
TARGET_RATIO = 1.5
TARGET_BATCH = 0.2
C_BATCH = 0.37
FORBIDDEN = ("asyncio", "pyroute2", "structlog")

class Daemon(Smcrouted):
    exited, log_shown = ":\n", 3000

    def __init__(self, smcrouted: str, ns: Netns, workdir: Path, config: str):
        super().__init__(workdir)
        self.ns = ns
        self.conf.write_text(config)
        self.argv = [smcrouted, "-n", "-f", str(self.conf), "-P", str(self.pidfile),
                     "-u", str(self.sock), "-l", "notice"]

    def start(self, timeout: float = 15.0) -> None:
        with open(self.logfile, "wb") as log, inside(self.ns):
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        if not self.wait_ready(timeout, 0.02):
            raise BenchError(f"smcrouted not ready in {timeout}s:\n{self.log_tail(self.log_shown)}")

    def mfc_keys(self) -> set[tuple[str, str]]:
        """(group, origin) hex words of the IPv4 MFC of the daemon's namespace."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/net/ip_mr_cache") as f:
            rows = f.read().splitlines()[1:]
        return {tuple(r.split()[:2]) for r in rows}


def mfc_key(source: str, group: str) -> tuple[str, str]:
    """The "Group Origin" words of an ip_mr_cache row (host-order hex)."""
    return mr_cache_word(group), mr_cache_word(source)


def timed(argv: list[str], stdin: bytes | None = None, check: bool = True) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - t0
    if check and proc.returncode != 0:
        raise BenchError(f"exit {proc.returncode}: {' '.join(argv)[:200]}\n"
                         f"{proc.stderr.decode(errors='replace')[:2000]}")
    return elapsed


def median_of(argv: list[str], runs: int) -> list[float]:
    timed(argv, check=False)  # warm the page cache
    return [timed(argv) for _ in range(runs)]


def batch_lines(n: int, verb: str) -> tuple[bytes, set[tuple[str, str]]]:
    lines, keys = [], set()
    for i in range(n):
        hi, lo = divmod(i, 250)
        group = f"225.{100 + hi // 256}.{hi % 256}.{lo + 1}"
        oif = OUT_IFS[i % len(OUT_IFS)]
        lines.append(f"{verb} {IN_IF} {SRC} {group}" + (f" {oif}" if verb == "add" else ""))
        keys.add(mfc_key(SRC, group))
    return ("\n".join(lines) + "\n").encode(), keys


def imports_of_show(ctl_python: str, sock: Path) -> tuple[list[str], int, float]:
    """Modules loaded by a real smcroutectl show, and its own import time."""
    code = (
        "import sys, io\n"
        "out, sys.stdout = sys.stdout, io.StringIO()\n"
        "from smcroute.unprivileged import smcroutectl\n"
        f"rc = smcroutectl.main(['-u', {str(sock)!r}, 'show'])\n"
        "sys.stdout = out\n"
        "print(rc, ' '.join(sorted(sys.modules)))\n")
    proc = subprocess.run([ctl_python, "-c", code], capture_output=True, text=True, timeout=30,
                          check=False)
    if proc.returncode != 0:
        raise BenchError(f"import probe failed: {proc.stderr[-2000:]}")
    rc, _, names = proc.stdout.strip().partition(" ")
    if rc != "0":
        raise BenchError(f"smcroutectl show in the import probe exited {rc}")
    modules = names.split()
    # -X importtime on the installed console script: total self+cumulative of top level
    script = str(VENV_BIN / "smcroutectl")
    proc = subprocess.run([ctl_python, "-X", "importtime", script, "-u", str(sock), "show"],
                          capture_output=True, text=True, timeout=30, check=False)
    total_us = 0
    for line in proc.stderr.splitlines():
        # "import time: self [us] | cumulative | imported package"
        if line.startswith("import time:") and "|" in line:
            parts = [p.strip() for p in line[len("import time:"):].split("|")]
            if parts[0].isdigit():
                total_us += int(parts[0])
    return modules, len(modules), total_us / 1e6


def row(name: str, values: list[float], base: float | None, target: str = "",
        ok: str = "") -> str:
    med = statistics.median(values)
    ratio = f"{med / base:5.2f}x" if base else ""
    return (f"{name:<44} {min(values) * 1e3:8.1f} {med * 1e3:8.1f} {max(values) * 1e3:8.1f}"
            f"  {ratio:>6}  {target:>10}  {ok}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="runs per command (a)")
    parser.add_argument("--batch", type=int, default=2000, help="lines per batch (b)")
    parser.add_argument("--batch-repeat", type=int, default=5, help="batches (b)")
    parser.add_argument("--smcroutectl", default=str(VENV_BIN / "smcroutectl"))
    parser.add_argument("--smcrouted", default=str(VENV_BIN / "smcrouted"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory (log)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("must run as root (network namespaces, multicast routing)")
    if args.runs < 1 or not 1 <= args.batch <= 60000 or args.batch_repeat < 1:
        parser.error("--runs >= 1, --batch 1..60000, --batch-repeat >= 1")
    for exe in (args.smcroutectl, args.smcrouted, SYSTEM_PYTHON):
        if not os.access(exe, os.X_OK):
            parser.error(f"{exe} is not executable")

    raise_on_signals()
    with workspace("ctlbench", keep=args.keep) as ws:
        return bench(args, ws)


def bench(args: argparse.Namespace, ws: Workspace) -> int:
    daemon: Daemon | None = None
    try:
        router = build(ws.tag, ws.namespaces)
        config = "\n".join([f"phyint {IN_IF} enable", *(f"phyint {o} enable" for o in OUT_IFS),
                            f"mroute from {IN_IF} source {SRC} group 225.1.1.1 to r-o1 r-o2",
                            f"mroute from {IN_IF} group 225.2.0.0/16 to r-o3"]) + "\n"
        daemon = Daemon(args.smcrouted, router, ws.workdir, config)
        daemon.start()
        ctl = [args.smcroutectl, "-u", str(daemon.sock)]
        rows: dict[str, list[float]] = {}

        # (a) one command at a time, interleaved (round robin) so that the
        # machine's load at any moment weighs on every command alike
        venv_python = str(VENV_BIN / "python")
        add = [*ctl, "add", IN_IF, SRC, "225.3.3.3", "r-o1", "r-o2"]
        remove = [*ctl, "remove", IN_IF, SRC, "225.3.3.3"]
        commands: dict[str, list[str]] = {
            "/usr/bin/python3 -I -c pass": [SYSTEM_PYTHON, "-I", "-c", "pass"],
            "venv python -I -c pass": [venv_python, "-I", "-c", "pass"],
            "smcroutectl version": [args.smcroutectl, "version"],
            "smcroutectl show": [*ctl, "show"],
            "smcroutectl -j show interfaces": [*ctl, "-j", "show", "interfaces"],
            "smcroutectl add IIF SRC GRP OIF OIF": add,
            "smcroutectl remove IIF SRC GRP": remove,
        }
        rows: dict[str, list[float]] = {name: [] for name in commands}
        before = daemon.mfc_keys()
        for argv in commands.values():
            timed(argv)  # warm the page cache (add, then remove: back to the start)
        for _ in range(args.runs):
            for name, argv in commands.items():
                rows[name].append(timed(argv))
                if argv is add and mfc_key(SRC, "225.3.3.3") not in daemon.mfc_keys():
                    raise BenchError("add did not reach the kernel")
        if daemon.mfc_keys() != before:
            raise BenchError("remove did not restore the MFC")
        path_python = shutil.which("python3") or ""
        if path_python:
            rows[f"python3 on PATH -I -c pass ({path_python})"] = median_of(
                [path_python, "-I", "-c", "pass"], max(5, args.runs // 5))

        modules, nmods, import_s = imports_of_show(venv_python, daemon.sock)
        bad = sorted(m for m in modules if m.split(".")[0] in FORBIDDEN)

        # (b) batches
        add_text, keys = batch_lines(args.batch, "add")
        remove_text, _ = batch_lines(args.batch, "remove")
        base = daemon.mfc_keys()
        if keys & base:
            raise BenchError("batch groups overlap the configured routes")
        batch_add, batch_remove = [], []
        for _ in range(args.batch_repeat):
            batch_add.append(timed([*ctl, "-b"], stdin=add_text))
            now = daemon.mfc_keys()
            if now != base | keys:
                raise BenchError(f"after the add batch the MFC holds {len(now & keys)} of"
                                 f" {len(keys)} routes ({len(now - base - keys)} unexpected)")
            batch_remove.append(timed([*ctl, "-b"], stdin=remove_text))
            if daemon.mfc_keys() != base:
                raise BenchError("after the remove batch the MFC is not back to the start")
        daemon.check_alive()

        # report
        base_py = statistics.median(rows["/usr/bin/python3 -I -c pass"])
        print()
        print(f"smcroutectl: {args.smcroutectl}")
        print(f"per command: {args.runs} runs each, wall ms from spawn to exit;"
              " ratio = median / median of /usr/bin/python3 -I -c pass")
        head = (f"{'command':<44} {'min':>8} {'median':>8} {'max':>8}  {'ratio':>6}"
                f"  {'target':>10}  ok")
        print(head)
        print("-" * len(head))
        for name, values in rows.items():
            target, ok = "", ""
            if name.startswith("smcroutectl") and name != "smcroutectl version":
                target = f"<= {TARGET_RATIO}x"
                ok = "yes" if statistics.median(values) <= TARGET_RATIO * base_py else "NO"
            print(row(name, values, base_py, target, ok))
        print()
        print(f"smcroutectl show imports {nmods} modules ({import_s * 1e3:.1f} ms of imports by"
              f" -X importtime); {', '.join(FORBIDDEN)}: "
              + ("none (ok)" if not bad else f"IMPORTED: {' '.join(bad)} (NO)"))
        heavy = [m for m in ("msgpack", "typing", "dataclasses", "socket", "json", "datetime")
                 if m in modules]
        print("  of note:", " ".join(heavy) if heavy
              else "none of msgpack, typing, dataclasses, socket, json, datetime")
        print()
        print(f"batch: {args.batch} lines of distinct (S,G), {args.batch_repeat} runs, wall s"
              " from spawning smcroutectl -b to its exit; MFC checked after each")
        head = f"{'batch':<44} {'min':>8} {'median':>8} {'max':>8}  {'target':>10} {'C':>6}  ok"
        print(head)
        print("-" * len(head))
        for name, values, target in ((f"-b {args.batch} x add", batch_add, TARGET_BATCH),
                                     (f"-b {args.batch} x remove", batch_remove, None)):
            med = statistics.median(values)
            ok = ("yes" if med <= target else "NO") if target else ""
            tgt = f"<= {target}" if target else ""
            c = f"{C_BATCH}" if target else ""
            print(f"{name:<44} {min(values):8.3f} {med:8.3f} {max(values):8.3f}  {tgt:>10}"
                  f" {c:>6}  {ok}")
        print()
        print(json.dumps({"python_pass_ms": round(base_py * 1e3, 2),
                          "show_ms": round(statistics.median(rows["smcroutectl show"]) * 1e3, 2),
                          "show_ratio": round(statistics.median(rows["smcroutectl show"])
                                              / base_py, 2),
                          "batch_add_s": round(statistics.median(batch_add), 3),
                          "forbidden_imports": bad}))
        return 0
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if daemon is not None:
            daemon.stop()


if __name__ == "__main__":
    sys.exit(main())
