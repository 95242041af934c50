"""The privileged helper as a trust boundary, driven directly over its channel.

A test process plays the controller: it starts `python -I -m
smcroute.privileged` exactly as smcrouted does, in a namespace of its own.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

import msgpack
import pytest

from .netns import Netns, netns_available

pytestmark = pytest.mark.integration

DRIVER = Path(__file__).with_name("helper_driver.py")
ALLOWED_TOP = {"msgpack", "prctl", "_prctl", "cython_runtime"}
ALLOWED_OURS = ("smcroute.privileged", "smcroute.ipc", "smcroute.policy")
FORBIDDEN = ("structlog", "pyroute2", "asyncio", "smcroute.unprivileged")


@pytest.fixture
def ns():
    ok, why = netns_available()
    if os.geteuid() != 0 or not ok:
        pytest.skip(f"needs root and network namespaces: {why}")
    n = Netns(f"smcpy-h{secrets.token_hex(3)}").create()
    try:
        yield n
    finally:
        n.delete()


def drive(ns: Netns, *datagrams: str) -> list[dict]:
    out = ns.exec(sys.executable, str(DRIVER), *datagrams, timeout=20)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def raw(obj) -> str:
    return msgpack.packb(obj, use_bin_type=True).hex()


def test_helper_imports_only_stdlib_msgpack_prctl_and_its_own_packages(ns):
    results = drive(ns, "hello", "modules")
    hello, modules, end = results
    assert hello["replies"][0]["ok"] is True
    # the modules are listed from inside the sandbox: none came after it
    lsm = Path("/sys/kernel/security/lsm")
    if lsm.exists() and "landlock" in lsm.read_text():
        assert hello["replies"][0]["sandbox"].startswith("landlock ABI "), hello
    loaded = set(modules["replies"][0]["modules"])
    # Against an empty baseline: everything in the helper's sys.modules, the
    # interpreter's own start-up included, is named here or is standard
    # library. No site, no .pth hook, no sitecustomize (-I -S).
    strays = sorted(
        m for m in loaded
        if m.split(".")[0] not in sys.stdlib_module_names
        and m.split(".")[0] not in ALLOWED_TOP
        and not m.startswith("_cython_")  # msgpack's compiled runtime
        and m not in ("__main__", "smcroute")  # -c's module; the namespace parent of ours
        and not any(m == p or m.startswith(p + ".") for p in ALLOWED_OURS)
    )
    assert strays == []
    assert not [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert not {"site", "sitecustomize", "usercustomize", "_distutils_hack"} & loaded
    assert {"smcroute.privileged.server", "smcroute.policy.ops", "msgpack", "prctl"} <= loaded
    # the controller's typed view of the channel is not the helper's business
    assert "smcroute.ipc.helper" not in loaded
    assert end["exit"] == 0  # EOF is a normal end


def test_a_pth_file_in_the_helpers_path_never_runs(ns, tmp_path):
    # A .pth file next to our packages runs in every interpreter with site
    # (the driver here, with its argv); not in the helper (argv[0] "-c").
    from smcroute.unprivileged.smcrouted import helper_path
    marker = tmp_path / "ran"
    pth = Path(helper_path()[0]) / "zz-smcroute-test.pth"
    pth.write_text(f"import sys; open({str(marker)!r}, 'a').write(repr(sys.argv[:1]) + '\\n')\n")
    try:
        results = drive(ns, "hello")
    finally:
        pth.unlink()
    assert results[0]["replies"][0]["ok"] is True
    ran = marker.read_text().splitlines()
    assert ran and "['-c']" not in ran, ran  # it ran in the driver, not in the helper


V4 = {"family": 4, "source": bytes([10, 0, 0, 1]), "group": bytes([225, 1, 2, 3])}


@pytest.mark.parametrize("datagram", [
    b"\xc1".hex(),  # a msgpack code that is never valid
    os.urandom(64).hex(),
    raw({"op": "hello", "id": 1}),  # not a list
    raw([]),  # empty batch
    raw([{"op": "format_disk", "id": 1}]),
    raw([{"op": "hello", "id": 1, "extra": 1}]),
    raw([{"op": "del_vif", "id": 1, "family": 4, "vif": True}]),  # bool is not int
    raw([{"op": "add_vif", "id": 1, "family": 4, "vif": 32, "ifindex": 1, "threshold": 1}]),
    raw([{"op": "add_mfc", "id": 1, **V4, "group": bytes([10, 1, 2, 3]), "iif": 0, "oifs": []}]),
    raw([{"op": "hello", "id": 1}] * 1025),  # batch too large
])
def test_protocol_violation_ends_the_helper(ns, datagram):
    results = drive(ns, "hello", datagram, "hello")
    assert results[0]["replies"][0]["ok"] is True
    # it says why before it goes: the controller logs that (not only stderr,
    # which is /dev/null once the daemon runs in the background)
    if "send_error" not in results[1]:
        assert results[1]["t"] == "fatal", results
        assert results[1]["error"].startswith("protocol violation, exiting: "), results
    end = results[-1]
    assert end["exit"] == 3
    assert "protocol violation" in end["stderr"]


def test_refused_and_failed_requests_get_errno_replies_and_the_helper_goes_on(ns):
    ifindex = int(ns.exec("cat", "/sys/class/net/lo/ifindex"))
    batch = [
        {"op": "del_vif", "id": 1, "family": 4, "vif": 3},  # never added: ENODEV (policy)
        {"op": "add_vif", "id": 2, "family": 4, "vif": 0, "ifindex": 999, "threshold": 1},
        {"op": "add_vif", "id": 3, "family": 6, "vif": 0, "ifindex": ifindex, "threshold": 1},
        {"op": "add_vif", "id": 4, "family": 6, "vif": 1, "ifindex": ifindex, "threshold": 1},
        {"op": "add_mfc", "id": 5, "family": 6, "source": bytes(15) + b"\1",
         "group": b"\xff\x0e" + bytes(13) + b"\1", "iif": 0, "oifs": [[2, 1]]},
        {"op": "sg_count", "id": 6, **V4},
    ]
    results = drive(ns, raw(batch), "hello")
    replies = {r["id"]: r for r in results[0]["replies"]}
    assert replies[1]["ok"] is False and replies[1]["errno"] == 19  # ENODEV
    assert replies[2]["ok"] is False and replies[2]["errno"] == 99  # kernel: EADDRNOTAVAIL
    assert replies[3]["ok"] is True
    assert replies[4]["ok"] is False and replies[4]["errno"] == 17  # EEXIST: ifindex has a mif
    assert replies[5]["ok"] is False and replies[5]["errno"] == 19  # oif 2 never added
    assert replies[6]["ok"] is False  # no such (S,G) in the kernel
    assert results[1]["replies"][0]["ok"] is True  # still serving
    assert results[-1]["exit"] == 0
