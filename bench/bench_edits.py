#!/usr/bin/env python3
"""Benchmark single smcroutectl edits: what one add or remove costs the daemon.

Run as root, from the project venv:

    /opt/smcroute-py/venv/bin/python bench/bench_edits.py [--commands 400] [--clients 20]
        [--per-client 200] [--c-smcrouted PATH --c-smcroutectl PATH]

It builds its own namespaces (router R: one inbound and three outbound
veths, their peers in H; no traffic) and starts smcrouted in R (this
process switched into R by setns) with 9, then 2004 (S,G) routes, and
measures:

  (a) the daemon's CPU time per single `smcroutectl add` / `remove` of an
      (S,G), from the daemon's own accounting (/proc/PID/task/*/schedstat,
      nanoseconds, every thread; for smcroute-py the controller, whose
      privileged helper is a separate process and counted apart),
      --commands of them one after the other, at each table size. A cost
      that grows with the table is what makes scripts of single commands
      quadratic. Target: <= 1 ms at 2004 routes.
  (b) --clients clients running --per-client single adds (distinct (S,G))
      each, all at once: wall time from the first spawn to the last exit,
      then the same as removes; all are checked to be in (out of) the
      kernel MFC. Target: <= 3 x C SMCRoute. Beside it, the same clients
      running `/usr/bin/python3 -I -c pass` instead: the interpreter's own
      start-up, the floor of any Python smcroutectl.

With --c-smcrouted/--c-smcroutectl (a C SMCRoute build, e.g. Debian's
package unpacked with `apt-get download smcroute && dpkg -x ...`), the
same is measured for it, in turn, on the same namespaces.

Everything created (namespaces, processes, temporary files) is removed on
exit, also on failure or Ctrl-C; processes are stopped by PID only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

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
SRC = "10.0.1.2"
TARGET_EDIT_MS = 1.0
TARGET_RATIO = 3.0


class Daemon(Smcrouted):
    exited, log_shown = ":\n", 3000

    def __init__(self, smcrouted: str, ns: Netns, workdir: Path, config: str):
        super().__init__(workdir)
        self.ns = ns
        self.conf.write_text(config)
        self.argv = [smcrouted, "-n", "-f", str(self.conf), "-P", str(self.pidfile),
                     "-u", str(self.sock), "-l", "notice"]

    def start(self, timeout: float = 20.0) -> None:
        with open(self.logfile, "wb") as log, inside(self.ns):
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        if not self.wait_ready(timeout, 0.02):
            raise BenchError(f"smcrouted not ready in {timeout}s:\n{self.log_tail(3000)}")
        time.sleep(0.5)  # let start-up work (imports off the start-up path) finish

    def cpu_ns(self) -> int:
        """CPU time of every thread of the daemon process, in nanoseconds."""
        total = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ValueError):
                pass
        return total

    def mfc_keys(self) -> set[tuple[str, str]]:
        with open(f"/proc/{self.pid}/net/ip_mr_cache") as f:
            return {tuple(r.split()[:2]) for r in f.read().splitlines()[1:]}


def config(routes: int) -> str:
    lines = [f"phyint {IN_IF} enable", *(f"phyint {o} enable" for o in OUT_IFS)]
    for i in range(routes):
        hi, lo = divmod(i, 250)
        lines.append(f"mroute from {IN_IF} source 10.9.{hi}.{lo + 1} group 225.1.1.1 to"
                     f" {OUT_IFS[i % 3]}")
    return "\n".join(lines) + "\n"


def group_of(i: int) -> str:
    hi, lo = divmod(i, 250)
    return f"225.{100 + hi // 256}.{hi % 256}.{lo + 1}"


def run(argv: list[str]) -> None:
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise BenchError(f"exit {proc.returncode}: {' '.join(argv)}\n{proc.stderr.decode()}")


def cpu_per_edit(daemon: Daemon, ctl: list[str], commands: int) -> tuple[float, float]:
    """(ms per add, ms per remove) of the daemon's CPU, commands of each."""
    base = daemon.mfc_keys()
    add_ns = remove_ns = 0
    for i in range(commands):
        group = group_of(i)
        t0 = daemon.cpu_ns()
        run([*ctl, "add", IN_IF, SRC, group, "r-o1", "r-o2"])
        t1 = daemon.cpu_ns()
        run([*ctl, "remove", IN_IF, SRC, group])
        t2 = daemon.cpu_ns()
        add_ns += t1 - t0
        remove_ns += t2 - t1
    if daemon.mfc_keys() != base:
        raise BenchError("the adds and removes did not leave the MFC as it was")
    return add_ns / commands / 1e6, remove_ns / commands / 1e6


def clients(daemon: Daemon, ctl: list[str], n: int, per: int, verb: str) -> float:
    """n clients at once, each per single commands; wall seconds for all."""
    errors: list[str] = []

    def client(c: int) -> None:
        try:
            for i in range(per):
                group = group_of(c * per + i)
                args = [IN_IF, SRC, group] + (["r-o3"] if verb == "add" else [])
                run([*ctl, verb, *args])
        except BenchError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    elapsed = time.perf_counter() - t0
    if errors:
        raise BenchError(errors[0])
    return elapsed


def floor(n: int, per: int) -> float:
    """The same clients, each running /usr/bin/python3 -I -c pass instead:
    what starting the interpreter alone costs that many commands."""
    def client() -> None:
        for _ in range(per):
            run(["/usr/bin/python3", "-I", "-c", "pass"])

    threads = [threading.Thread(target=client) for _ in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return time.perf_counter() - t0


def measure(name: str, smcrouted: str, smcroutectl: str, router: Netns, ws: Workspace,
            args: argparse.Namespace) -> dict[str, float]:
    out: dict[str, float] = {}
    for routes in (9, 2004):
        daemon = Daemon(smcrouted, router, ws.workdir, config(routes))
        try:
            daemon.start()
            ctl = [smcroutectl, "-u", str(daemon.sock)]
            add, remove = cpu_per_edit(daemon, ctl, args.commands)
            out[f"cpu ms per add, {routes} routes"] = add
            out[f"cpu ms per remove, {routes} routes"] = remove
            if routes == 2004:
                base = daemon.mfc_keys()
                out["clients: adds (s)"] = clients(daemon, ctl, args.clients, args.per_client,
                                                   "add")
                want = {(mr_cache_word(group_of(i)), mr_cache_word(SRC))
                        for i in range(args.clients * args.per_client)}
                if not want <= daemon.mfc_keys():
                    raise BenchError(f"{name}: not every add reached the kernel")
                out["clients: removes (s)"] = clients(daemon, ctl, args.clients,
                                                      args.per_client, "remove")
                if daemon.mfc_keys() != base:
                    raise BenchError(f"{name}: the removes did not restore the MFC")
            daemon.check_alive()
        finally:
            daemon.stop()
        print(f"  {name}: {routes} routes done", file=sys.stderr)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=400, help="single edits per size (a)")
    parser.add_argument("--clients", type=int, default=20, help="clients at once (b)")
    parser.add_argument("--per-client", type=int, default=200, help="commands per client (b)")
    parser.add_argument("--smcrouted", default=str(VENV_BIN / "smcrouted"))
    parser.add_argument("--smcroutectl", default=str(VENV_BIN / "smcroutectl"))
    parser.add_argument("--c-smcrouted", help="a C SMCRoute smcrouted, to compare")
    parser.add_argument("--c-smcroutectl", help="its smcroutectl")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("must run as root (network namespaces, multicast routing)")
    if bool(args.c_smcrouted) != bool(args.c_smcroutectl):
        parser.error("--c-smcrouted and --c-smcroutectl go together")
    if not 1 <= args.clients * args.per_client <= 60000 or args.commands < 1:
        parser.error("--commands >= 1, clients x per-client 1..60000")
    raise_on_signals()
    with workspace("edits", keep=args.keep) as ws:
        try:
            router = build(ws.tag, ws.namespaces)
            results = {"smcroute-py": measure("smcroute-py", args.smcrouted, args.smcroutectl,
                                              router, ws, args)}
            results["smcroute-py"]["clients: python3 -I -c pass (s)"] = floor(
                args.clients, args.per_client)
            if args.c_smcrouted:
                results["C"] = measure("C SMCRoute", args.c_smcrouted, args.c_smcroutectl,
                                       router, ws, args)
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    report(results, args)
    return 0


def report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    ours, c = results["smcroute-py"], results.get("C")
    print()
    print(f"(a) daemon CPU per single edit, mean of {args.commands}; (b) {args.clients} clients"
          f" x {args.per_client} single commands at once, wall s")
    head = f"{'measure':<34} {'smcroute-py':>12} {'C SMCRoute':>11} {'ratio':>7}  target  ok"
    print(head)
    print("-" * len(head))
    for name, value in ours.items():
        other = c.get(name) if c else None
        ratio = f"{value / other:6.1f}x" if other else ""
        target, ok = "", ""
        if name.startswith("cpu ms") and "2004" in name:
            target, ok = f"<= {TARGET_EDIT_MS}", "yes" if value <= TARGET_EDIT_MS else "NO"
        elif name.startswith("clients") and other:
            target = f"<= {TARGET_RATIO}x"
            ok = "yes" if value <= TARGET_RATIO * other else "NO"
        theirs = f"{other:11.3f}" if other is not None else f"{'':>11}"
        print(f"{name:<34} {value:12.3f} {theirs} {ratio:>7}  {target:>6}  {ok}")
    print()
    print(json.dumps({k: {n: round(v, 4) for n, v in r.items()} for k, r in results.items()}))


if __name__ == "__main__":
    sys.exit(main())
