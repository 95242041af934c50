"""What the kernel holds on our behalf, and the steps to change it.

No asyncio here: the initial configuration is applied before the event
loop exists (see boot.py), reloads from inside it (controller.py); both go
through load_plan(), RouteState.requests() and RouteState.record().
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from smcroute.ipc.helper import AddMfc, AddVif, DelMfc, DelVif, Request
from smcroute.unprivileged import engine
from smcroute.unprivileged.config import read_config
from smcroute.unprivileged.flows import FlowTable, Limits
from smcroute.unprivileged.groups import Membership
from smcroute.unprivileged.interfaces import read_interfaces
from smcroute.unprivileged.levels import PRIORITY
from smcroute.unprivileged.membership import Memberships
from smcroute.unprivileged.model import (
    Config,
    Diagnostic,
    Directive,
    Mfc,
    MfcKey,
    Mroute,
    Pending,
    Vif,
    sg,
)
from smcroute.unprivileged.options import Options

if TYPE_CHECKING:  # structlog is imported only once the routes are in
    from smcroute.unprivileged.log import Logger

Todo = list[tuple[Request, Vif | Mfc]]


def pending_text(p: Pending) -> str:
    kind = "mroute" if isinstance(p.rule, Mroute) else "mgroup"
    return f"{kind} from {p.rule.iif} group {p.rule.group} pending: interface not available"


def log_diagnostic(log: Logger, d: Diagnostic) -> None:
    if d.where is None and "does not exist" in d.message:
        log.notice(str(d))
    else:
        log.warning(str(d))


@dataclass
class Loaded:
    """A configuration read and planned; target is None if it was rejected."""

    config: Config
    target: engine.Plan | None
    errors: list[str]


def plan_config(config: Config, opts: Options, installed: Mapping[Any, Vif]) -> engine.Plan:
    return engine.plan(config, read_interfaces(), installed, default_enable=not opts.no_vifs)


def load_plan(opts: Options, log: Logger, installed: Mapping[Any, Vif],
              initial: bool) -> Loaded:
    """Parse the config file and plan it (no kernel access); log what is wrong."""
    path = opts.conf_path
    config = read_config(path)
    target = None
    if not config.errors:
        target = plan_config(config, opts, installed)
    diagnostics = (*config.diagnostics, *(target.diagnostics if target else ()))
    for d in diagnostics:
        log_diagnostic(log, d)
    errors = [str(d) for d in diagnostics if d.error]
    if target is None or target.errors:
        if initial and any(d.where is None for d in config.errors):
            log.notice("Continuing anyway, waiting for client to connect.")
        else:
            log.warning(f"Parse error in {path}, configuration not applied"
                        + ("" if initial else ", keeping the running one"))
        return Loaded(config, None, errors)
    return Loaded(config, target, errors)


def limits(opts: Options) -> Limits:
    return Limits(opts.max_learned, opts.max_learned_per_rule, opts.upcall_rate,
                  float(opts.cache_timeout) if opts.cache_timeout > 0 else 60.0)


def audit(log: Logger, req: Request, obj: Vif | Mfc, reply: dict[str, Any],
          cause: str) -> None:
    """One privileged operation: what, on whose behalf, and the kernel's answer."""
    if isinstance(obj, Vif):
        what = f"{'VIF' if obj.family == 4 else 'MIF'} {obj.vif} {obj.name}"
    else:
        what = f"{sg(obj.key)} from {obj.iif_name}"
    result = "ok" if reply.get("ok") else f"errno {reply.get('errno')}: {reply.get('error')}"
    log.info("audit", op=req.op, what=what, cause=cause, result=result)


class RouteState:
    def __init__(self, log: Logger, level: int = PRIORITY["notice"],
                 budget: Limits | None = None) -> None:
        self.log = log
        # per-route debug lines cost more than the kernel calls: format only when shown
        self.debug = level >= PRIORITY["debug"]
        self.audit = level >= PRIORITY["info"]
        self.vifs: dict[tuple[int, int], Vif] = {}  # (family, slot) -> VIF we installed
        self.mfc: dict[MfcKey, Mfc] = {}
        self.pending: list[Pending] = []
        self.directives: tuple[Directive, ...] = ()  # the config, with smcroutectl's edits
        self.target: engine.Plan | None = None  # the plan the kernel holds
        self.flows = FlowTable(log, budget or Limits(), verbose=level >= PRIORITY["info"])
        self.memberships = Memberships()

    def use_logger(self, log: Logger) -> None:
        """The real logger replaces the start-up one."""
        self.log = self.flows.log = log

    def vif_name(self, family: int, slot: int) -> str | None:
        vif = self.vifs.get((family, slot))
        return vif.name if vif else None

    def changes(self, target: engine.Plan) -> engine.Changes:
        """What to send so the kernel holds target (with the learned flows)."""
        self.flows.replan(target)
        for p in target.pending:
            if p not in self.pending:
                self.log.notice(pending_text(p))
        for p in self.pending:
            if p not in target.pending and p.rule in self.directives:
                kind = "mroute" if isinstance(p.rule, Mroute) else "mgroup"
                self.log.notice(f"Activated pending {kind} from {p.rule.iif} group {p.rule.group}")
        self.pending = target.pending
        return engine.diff(self.vifs, self.mfc, target)

    def teardown(self) -> engine.Changes:
        return engine.Changes(del_mfc=tuple(self.mfc.values()),
                              del_vifs=tuple(self.vifs.values()))

    @staticmethod
    def requests(changes: engine.Changes, next_id: Callable[[], int]) -> Todo:
        """Helper requests for changes, in the order they must run."""
        todo: Todo = []
        for v in changes.add_vifs:
            todo.append((AddVif(next_id(), v.family, v.vif, v.ifindex, v.threshold), v))
        for m in changes.del_mfc:
            todo.append((DelMfc(next_id(), m.key.family, m.key.source, m.key.group), m))
        for m in changes.set_mfc:
            todo.append((AddMfc(next_id(), m.key.family, m.key.source, m.key.group,
                                m.iif, m.oifs), m))
        for v in changes.del_vifs:
            todo.append((DelVif(next_id(), v.family, v.vif), v))
        return todo

    def record_all(self, todo: Todo, replies: list[dict[str, Any]],
                   cause: str = "config") -> dict[MfcKey, str]:
        """Record every reply; return the MFC entries the kernel refused, with why."""
        failed: dict[MfcKey, str] = {}
        for (req, obj), reply in zip(todo, replies, strict=True):
            self.record(req, obj, reply, cause)
            if isinstance(obj, Mfc) and not reply.get("ok"):
                failed[obj.key] = str(reply.get("error", ""))
        return failed

    def record(self, req: Request, obj: Vif | Mfc, reply: dict[str, Any],
               cause: str = "config") -> None:
        """Remember what the kernel accepted; log what it refused. Every
        privileged operation is an audit event (at info level)."""
        ok = bool(reply.get("ok"))
        error = reply.get("error", "")
        if self.audit:
            audit(self.log, req, obj, reply, cause)
        if isinstance(obj, Vif):
            kind = "VIF" if obj.family == 4 else "MIF"
            slot = (obj.family, obj.vif)
            if isinstance(req, AddVif):
                if ok:
                    self.vifs[slot] = obj
                    self.log.debug(f"Map iface {obj.name:<16} => {kind} {obj.vif:<2} ifindex"
                                   f" {obj.ifindex:2} TTL threshold {obj.threshold}")
                else:
                    self.log.warning(f"Failed creating {kind} {obj.vif} for {obj.name}: {error}")
            else:
                if self.vifs.get(slot) == obj:
                    del self.vifs[slot]  # gone either way: the helper forgets it too
                if ok:
                    self.log.debug(f"Removed {kind} {obj.vif} of {obj.name}")
            return
        if isinstance(req, AddMfc):
            if ok:
                self.mfc[obj.key] = obj
                if self.debug:
                    self.log.debug(f"Add {sg(obj.key)} from {obj.iif_name} to"
                                   f" {' '.join(obj.oif_names) or '(none)'}")
            else:
                where = f"{obj.where}: " if obj.where else ""
                self.log.warning(f"{where}failed adding IPv{obj.key.family} multicast route"
                                 f" {sg(obj.key)}: {error}")
        else:
            self.mfc.pop(obj.key, None)
            if not self.debug:
                return
            if ok:
                self.log.debug(f"Del {sg(obj.key)} from {obj.iif_name}")
            else:
                self.log.debug(f"failed removing multicast route {sg(obj.key)}: {error}")

    def adopt(self, target: engine.Plan, now: float) -> list[tuple[Membership, str]]:
        """After applying changes(target): names, templates and flows follow
        it, and group memberships are joined and left to match it. Returns
        the joins that failed."""
        self.target = target
        self.adopt_names(target)
        self.flows.adopt(self.mfc, now)
        errors = self.memberships.apply(target.memberships)
        for _, error in errors:
            self.log.err(error)
        return errors

    def adopt_names(self, target: engine.Plan) -> None:
        """Unchanged kernel objects take the target's names (interface renames)."""
        for v in target.vifs.values():
            old = self.vifs.get((v.family, v.vif))
            if old is not None and old.ifindex == v.ifindex:
                self.vifs[(v.family, v.vif)] = v
        for key, m in target.mfc.items():
            if self.mfc.get(key) == m:
                self.mfc[key] = m
