"""Send one multicast flow inside network namespaces and count what arrives.

Used by scripts/demo.sh (run it with the project venv's python, as root):

    demo_traffic.py --sender NS:IF --source 10.0.1.2 --group 225.1.2.3 \\
        --count 20 --listen receiver=NS:IF:20 --listen bystander=NS:IF:0

Each listener joins the group on its interface; the sender sends COUNT
datagrams with TTL/hop limit 8 from SOURCE out of its interface. Prints one
line and exits 1 if any listener's count differs from its expected count.
The sockets are opened inside the given namespaces only.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from netns import Netns, Receiver, collect, family_of, new_marker, send


def _listener(text: str) -> tuple[str, str, str, int]:
    try:
        label, rest = text.split("=", 1)
        ns, ifname, expected = rest.split(":")
        return label, ns, ifname, int(expected)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want LABEL=NS:IF:EXPECTED, got {text!r}") from None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sender", required=True, help="NS:IF the flow leaves from")
    ap.add_argument("--source", required=True, help="source address (on the sender's IF)")
    ap.add_argument("--group", required=True)
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--note", default="", help="text printed after the flow")
    ap.add_argument("--listen", type=_listener, action="append", default=[])
    opts = ap.parse_args()

    sender_ns, sender_if = opts.sender.split(":")
    marker = new_marker()
    receivers: dict[str, Receiver] = {}
    try:
        for label, ns, ifname, _ in opts.listen:
            receivers[label] = Receiver(Netns(ns), ifname, opts.group, opts.port, marker)
        sent = send(
            Netns(sender_ns), opts.source, opts.group, opts.port, opts.count, marker, sender_if
        )
        expect = {label: n for label, _, _, n in opts.listen}
        got = collect(receivers, expect)
    finally:
        for r in receivers.values():
            r.close()

    ok = got == expect
    version = "IPv6" if family_of(opts.group) == socket.AF_INET6 else "IPv4"
    flow = f"{version} ({opts.source}, {opts.group})"
    counts = " ".join(f"{label}={got[label]}" for label in expect)
    verdict = "ok" if ok else "WRONG, want " + " ".join(f"{k}={v}" for k, v in expect.items())
    print(f"  {flow:<28} {opts.note:<10} sent={sent} {counts}  {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
