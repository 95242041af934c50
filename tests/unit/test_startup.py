"""Start-up before the event loop: the interface table, the deferred log and
boot() (greet the helper, apply the initial configuration with blocking
calls), with a fake helper thread serving the real request handling."""

from __future__ import annotations

import errno
import signal
import struct
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import structlog
from smcroute.policy import ops
from smcroute.privileged.server import Server
from smcroute.unprivileged import boot as boot_module
from smcroute.unprivileged import interfaces
from smcroute.unprivileged.boot import Booted, boot, describe_exit, report_helper_lost
from smcroute.unprivileged.bootlog import DeferredLog
from smcroute.unprivileged.levels import PRIORITY
from smcroute.unprivileged.model import Interface
from smcroute.unprivileged.options import Options

from .fakes import CLOSE, FakeKernel, FakeLog, ThreadHelper

# -- interfaces.read_interfaces ------------------------------------------------------------------

IFF_UP, IFF_MULTICAST = 0x1, 0x1000


def fake_links(monkeypatch: pytest.MonkeyPatch, links: list[tuple[int, str]],
               flags: dict[str, int]) -> list[tuple[int, bytes]]:
    """if_nameindex() gives links; SIOCGIFFLAGS answers from flags (absent: ENODEV)."""
    calls: list[tuple[int, bytes]] = []

    def ioctl(sock: Any, request: int, arg: bytes) -> bytes:
        calls.append((request, arg))
        name = arg[:16].rstrip(b"\0").decode()
        if name not in flags:
            raise OSError(errno.ENODEV, "No such device")
        return struct.pack("16sH22x", name.encode(), flags[name])

    monkeypatch.setattr(interfaces.socket, "if_nameindex", lambda: list(links))
    monkeypatch.setattr(interfaces.fcntl, "ioctl", ioctl)
    return calls


def test_read_interfaces(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_links(monkeypatch, [(3, "a1"), (1, "lo"), (7, "eth0"), (4, "a2")], {
        "lo": IFF_UP | 0x8, "a1": IFF_UP | IFF_MULTICAST, "a2": IFF_MULTICAST,
        "eth0": 0xFFFF})
    table = interfaces.read_interfaces()
    assert table == {"lo": Interface("lo", 1, False), "a1": Interface("a1", 3, True),
                     "a2": Interface("a2", 4, True), "eth0": Interface("eth0", 7, True)}
    assert list(table) == ["lo", "a1", "a2", "eth0"]  # ifindex order
    assert [request for request, _ in calls] == [interfaces.SIOCGIFFLAGS] * 4
    assert interfaces.SIOCGIFFLAGS == 0x8913
    assert calls[0][1] == b"lo" + b"\0" * 38  # struct ifreq: name, then zeroes


def test_vanished_link_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # a link listed by if_nameindex() and gone before SIOCGIFFLAGS
    fake_links(monkeypatch, [(1, "lo"), (2, "gone"), (3, "a1")],
               {"lo": IFF_UP, "a1": IFF_MULTICAST})
    assert interfaces.read_interfaces() == {"lo": Interface("lo", 1, False),
                                            "a1": Interface("a1", 3, True)}


def test_no_links(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_links(monkeypatch, [], {})
    assert interfaces.read_interfaces() == {}


def test_longest_interface_name(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "abcdefghijklmno"  # IFNAMSIZ - 1
    calls = fake_links(monkeypatch, [(9, name)], {name: IFF_MULTICAST})
    assert interfaces.read_interfaces() == {name: Interface(name, 9, True)}
    assert calls[0][1][:16] == name.encode() + b"\0"


# -- bootlog.DeferredLog --------------------------------------------------------------------------


def test_deferred_log_replays_in_order() -> None:
    deferred = DeferredLog()
    deferred.notice("SMCRoute v2.6.1-dev")
    deferred.debug("mrouter helper ready", helper_pid=42, table=0)
    deferred.warning("x.conf line 1: Unknown command x, skipping.")
    deferred.err("boom")
    deferred.anything_at_all("kept too")
    calls: list[tuple[str, str, dict[str, Any]]] = []

    class Recorder:
        def __getattr__(self, method: str) -> Any:
            return lambda event, **kw: calls.append((method, event, kw))

    deferred.replay(Recorder())
    assert calls == [
        ("notice", "SMCRoute v2.6.1-dev", {}),
        ("debug", "mrouter helper ready", {"helper_pid": 42, "table": 0}),
        ("warning", "x.conf line 1: Unknown command x, skipping.", {}),
        ("err", "boom", {}),
        ("anything_at_all", "kept too", {}),
    ]
    # replayed once: a second replay (another way out) repeats nothing
    assert deferred.events == []
    deferred.replay(Recorder())
    assert len(calls) == 5
    deferred.info("later")
    deferred.replay(Recorder())
    assert calls[-1] == ("info", "later", {})


def test_deferred_log_into_the_real_logger(capsys: pytest.CaptureFixture[str]) -> None:
    from smcroute.unprivileged.log import configure

    deferred = DeferredLog()
    deferred.notice("first")
    deferred.debug("hidden")
    deferred.warning("second", key="value")
    try:
        deferred.replay(configure("smcroute", PRIORITY["notice"], stderr=True, use_syslog=False))
    finally:
        structlog.reset_defaults()  # configure() is global: leave no trace for other tests
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": ", 1)[1] for line in err] == ["first", "second key=value"]
    assert all(line.startswith("smcroute[") for line in err)


# -- boot -----------------------------------------------------------------------------------------


class FakeProcess:
    """What boot() needs of the helper's subprocess.Popen."""

    pid = 4242

    def __init__(self, returncode: int | None) -> None:
        self.returncode = returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            raise subprocess.TimeoutExpired("helper", timeout or 0)
        return self.returncode


def serving_helper(kernel: FakeKernel, die_after: int | None = None,
                   sandbox: str = "landlock ABI 7, seccomp") -> ThreadHelper:
    """The helper's request handling; with die_after, a protocol violation then."""
    server = Server(None, kernel, ops.State(about={"table": 0, "pid": 5, "sandbox": sandbox}))  # type: ignore[arg-type]

    def respond(helper: ThreadHelper, batch: list[Any]) -> Iterable[Any]:
        if die_after is not None and len(helper.received) > die_after:
            yield {"t": "fatal", "error": "protocol violation, exiting: test"}
            yield CLOSE
            return
        yield {"t": "replies", "replies": [server.execute(r) for r in ops.parse_batch(batch)]}

    return ThreadHelper(respond)


@pytest.fixture
def links(monkeypatch: pytest.MonkeyPatch) -> dict[str, Interface]:
    table = {name: Interface(name, i + 2, True) for i, name in enumerate(["a1", "a2", "a3"])}
    monkeypatch.setattr(boot_module, "read_interfaces", lambda: table)
    return table


CONFIG = """\
phyint a3
mroute from a1 source 10.0.0.1 group 225.1.2.3 to a2 a3
mroute from a2 group 225.1.2.0/24 to a1
"""


def boot_with(tmp_path: Path, text: str | None, helper: ThreadHelper,
              level: int = PRIORITY["notice"], process: FakeProcess | None = None
              ) -> tuple[Booted | None, FakeLog]:
    path = tmp_path / "smcroute.conf"
    if text is not None:
        path.write_text(text)
    deferred = DeferredLog()
    booted = boot(Options(conf=str(path)), deferred, level,  # type: ignore[arg-type]
                  process or FakeProcess(0), helper.ours)  # type: ignore[arg-type]
    log = FakeLog()
    deferred.replay(log)
    return booted, log


def test_boot_applies_the_initial_config(tmp_path: Path, links: dict[str, Interface]) -> None:
    kernel = FakeKernel()
    helper = serving_helper(kernel)
    booted, log = boot_with(tmp_path, CONFIG, helper)
    assert booted is not None and booted.core.configured
    ledger = booted.core.ledger
    # the kernel holds exactly what the core believes it holds
    slots = {v.name: v.vif for (family, _), v in ledger.vifs.items() if family == 4}
    assert slots == {"a3": 0, "a1": 1, "a2": 2}
    for family in (4, 6):
        assert kernel.vifs[family] == {v.vif: v.ifindex for (f, _), v in ledger.vifs.items()
                                       if f == family}
    assert set(kernel.mfc) == {(k.family, k.source, k.group) for k in ledger.mfc}
    assert list(kernel.mfc.values()) == [(1, ((0, 1), (2, 1)))]
    # Hello first, then one batch: the VIFs before the routes, then the fast path's templates
    first, second = helper.received
    assert [r["op"] for r in first] == ["hello"]
    assert [r["op"] for r in second] == ["add_vif"] * 6 + ["add_mfc", "templates", "allow"]
    ids = [r["id"] for batch in helper.received for r in batch]
    assert ids == list(range(1, len(ids) + 1))
    assert ledger.next_id() == len(ids) + 1  # the event loop goes on from here
    assert log.at("warning") == [] and log.at("err") == []
    helper.stop()


def test_boot_at_debug_level_lists_the_helpers_modules(tmp_path: Path,
                                                       links: dict[str, Interface]) -> None:
    helper = serving_helper(FakeKernel())
    booted, log = boot_with(tmp_path, "phyint a1\n", helper, level=PRIORITY["debug"])
    assert booted is not None
    assert [[r["op"] for r in batch] for batch in helper.received] == [
        ["hello"], ["modules"], ["add_vif", "add_vif"]]
    assert booted.later == []  # (no script, nothing for the controller)
    assert "mrouter helper ready" in log.at("debug")
    assert "mrouter helper modules" in log.at("debug")
    helper.stop()


def test_a_helper_without_its_sandbox_is_a_warning(tmp_path: Path,
                                                  links: dict[str, Interface]) -> None:
    helper = serving_helper(FakeKernel(), sandbox="none: Landlock unavailable (test)")
    booted, log = boot_with(tmp_path, "phyint a1\n", helper)
    assert booted is not None
    assert log.at("warning") == ["The mrouter helper runs without part of its sandbox:"
                                 " none: Landlock unavailable (test)"]
    helper.stop()


def test_boot_with_a_bad_line_applies_the_good_ones(tmp_path: Path,
                                                    links: dict[str, Interface]) -> None:
    kernel = FakeKernel()
    helper = serving_helper(kernel)
    booted, log = boot_with(tmp_path, CONFIG + "mroute from a1\n", helper)
    assert booted is not None
    assert list(kernel.mfc.values()) == [(1, ((0, 1), (2, 1)))]
    assert log.at("warning") == [
        f"{tmp_path}/smcroute.conf line 4: mroute: missing multicast group, expected:"
        " group ADDR[/LEN]", f"Parse error in {tmp_path}/smcroute.conf"]
    helper.stop()


def test_boot_without_a_config_file(tmp_path: Path, links: dict[str, Interface]) -> None:
    helper = serving_helper(FakeKernel())
    booted, log = boot_with(tmp_path, None, helper)
    assert booted is not None and booted.core.ledger.mfc == {}
    assert log.at("notice") == [f"Configuration file {tmp_path}/smcroute.conf does not exist",
                                "Continuing anyway, waiting for client to connect."]
    helper.stop()


def test_boot_when_the_helper_dies(tmp_path: Path, links: dict[str, Interface]) -> None:
    helper = serving_helper(FakeKernel(), die_after=1)  # answers hello, then dies
    booted, log = boot_with(tmp_path, CONFIG, helper, process=FakeProcess(3))
    assert booted is None
    assert log.at("err") == [
        "mrouter helper (pid 4242) exited with status 3: protocol violation, exiting: test;"
        " exiting"]  # it died before any route went in
    helper.stop()


def test_boot_when_the_helper_is_gone_before_hello(tmp_path: Path,
                                                   links: dict[str, Interface]) -> None:
    helper = ThreadHelper(lambda h, batch: [CLOSE])
    booted, log = boot_with(tmp_path, CONFIG, helper, process=FakeProcess(-signal.SIGKILL))
    assert booted is None
    assert log.at("err") == [
        "mrouter helper (pid 4242) was killed by signal 9 (SIGKILL): the helper closed the"
        " channel; exiting"]  # nothing was installed yet: no routes to lose
    helper.stop()


@pytest.mark.parametrize(("code", "text"), [
    (None, "is not responding"),
    (0, "exited with status 0"),
    (3, "exited with status 3"),
    (-signal.SIGKILL, "was killed by signal 9 (SIGKILL)"),
    (-signal.SIGSEGV, "was killed by signal 11 (SIGSEGV)"),
    (-200, "was killed by signal 200 (unknown signal)"),
])
def test_describe_exit(code: int | None, text: str) -> None:
    assert describe_exit(code) == text


def test_report_helper_lost_of_a_hung_helper() -> None:
    log = FakeLog()
    report_helper_lost(log, FakeProcess(None), "cannot talk to the helper: timed out")  # type: ignore
    assert log.lines == [("err", "mrouter helper (pid 4242) is not responding: cannot talk to"
                                 " the helper: timed out; the kernel has dropped our routes,"
                                 " exiting")]


# -- what the start-up path imports -------------------------------------------------------------


def test_start_up_path_imports_neither_asyncio_nor_structlog() -> None:
    # Importing them costs a large part of the start-up budget; they come
    # after the initial routes are in (smcrouted.run) or not at all (-F).
    code = (
        "import sys\n"
        "import smcroute.unprivileged.smcrouted, smcroute.unprivileged.boot\n"
        "import smcroute.unprivileged.verify, smcroute.unprivileged.core\n"
        "import smcroute.unprivileged.channel, smcroute.unprivileged.bootlog\n"
        "heavy = sorted(m for m in sys.modules\n"
        "               if m.split('.')[0] in ('asyncio', 'structlog', 'pyroute2'))\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         check=True, timeout=30)
    assert out.stdout.strip() == ""
