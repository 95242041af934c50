"""The helper's (*,G) fast path: install a new flow without a round trip.

A new flow's first packets wait in the kernel until its route is in: every
hop to the controller and back adds to that wait. So the controller, which
alone decides what the rules are, hands the helper its (*,G) templates in
config order and a limit per template; for a NOCACHE upcall the first
template covering it decides. If that template still has room, the helper
installs the route at once (add_mfc's own state checks, policy.check_mfc:
VIFs it added, the MFC cap) and reports it as a "learned" upcall; otherwise the
upcall goes to the controller as before, which also decides everything the
templates do not cover (stop filters, budgets, WRONGVIF).

Limits are cumulative for a generation of templates: the controller raises
them as it books what the helper installed, so the learned-route budgets
and the upcall rate hold without the helper knowing them. Pure; standard
library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smcroute.ipc.helper import Allow, SetTemplates, Template


def _net(data: bytes, length: int) -> tuple[int, int]:
    bits = 8 * len(data)
    mask = ((1 << length) - 1) << (bits - length)
    return int.from_bytes(data, "big"), mask


@dataclass
class FastPath:
    generation: int = 0
    templates: tuple[Template, ...] = ()
    used: list[int] = field(default_factory=list)  # flows installed, per template
    limits: list[int] = field(default_factory=list)
    # (family, inbound VIF) -> [(index, source net, source mask, group net,
    # group mask)] in template order: an upcall looks at its own VIF's only
    _by_vif: dict[tuple[int, int], list[tuple[int, int, int, int, int]]] = field(
        default_factory=dict)

    def load(self, req: SetTemplates) -> None:
        """New templates: nothing may be installed until allow() says so."""
        self.generation = req.generation
        self.templates = req.templates
        self._by_vif = {}
        for i, t in enumerate(req.templates):
            self._by_vif.setdefault((t.family, t.iif), []).append(
                (i, *_net(t.source, t.source_len), *_net(t.group, t.group_len)))
        self.used = [0] * len(req.templates)
        self.limits = [0] * len(req.templates)

    def allow(self, req: Allow) -> bool:
        """Raise the limits; False (ignored) if meant for other templates."""
        if req.generation != self.generation or len(req.limits) != len(self.templates):
            return False
        self.limits = [max(old, new) for old, new in zip(self.limits, req.limits, strict=True)]
        return True

    def match(self, family: int, vif: int, source: bytes, group: bytes) -> int | None:
        """The index of the first template covering (S,G) on vif, if it has
        room left; None: the controller decides."""
        candidates = self._by_vif.get((family, vif))
        if not candidates:
            return None
        s = int.from_bytes(source, "big")
        g = int.from_bytes(group, "big")
        for i, snet, smask, gnet, gmask in candidates:
            if g & gmask == gnet and s & smask == snet:
                return i if self.used[i] < self.limits[i] else None
        return None

    def take(self, index: int) -> None:
        self.used[index] += 1
