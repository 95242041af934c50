"""Drive a privileged helper directly, as smcrouted would (run as root in a netns).

Usage: python helper_driver.py HEXDATAGRAM...  (each argument one raw datagram,
"hello"/"modules" are shortcuts). Prints one JSON line per reply datagram,
then {"exit": status, "stderr": text}.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from smcroute.ipc import codec
from smcroute.policy.limits import DEFAULT_MAX_MFC
from smcroute.unprivileged.options import User
from smcroute.unprivileged.smcrouted import helper_command


def jsonable(obj):
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, list):
        return [jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    return obj


def main(args: list[str]) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # exactly as smcrouted starts it, as nobody
    cmd = helper_command(theirs.fileno(), 0, User("nobody", 65534, 65534, ()), DEFAULT_MAX_MFC)
    proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], stderr=subprocess.PIPE, env={})
    theirs.close()
    ours.settimeout(5)
    shortcuts = {"hello": [{"op": "hello", "id": 1}], "modules": [{"op": "modules", "id": 2}]}
    for arg in args:
        data = codec.encode(shortcuts[arg]) if arg in shortcuts else bytes.fromhex(arg)
        try:
            ours.send(data)
            reply = ours.recv(codec.MAX_DATAGRAM)
        except OSError as exc:
            print(json.dumps({"send_error": str(exc)}))
            break
        if not reply:
            print(json.dumps({"eof": True}))
            break
        print(json.dumps(jsonable(codec.decode(reply))))
    ours.close()
    status = proc.wait(5)
    print(json.dumps({"exit": status, "stderr": proc.stderr.read().decode()}))


if __name__ == "__main__":
    main(sys.argv[1:])
