"""Who may do what on the control socket (standard library only, pure).

root, the daemon's own user and members of the socket's group may run
every command; members of the optional read-only group may only look
(show); anyone else is refused. Groups are the peer's primary and
supplementary groups, as the kernel reports them (SO_PEERCRED,
SO_PEERGROUPS) at connect time.
"""

from __future__ import annotations

from dataclasses import dataclass

READ_ONLY = frozenset({"show"})


@dataclass(frozen=True)
class Peer:
    uid: int
    gid: int
    pid: int
    groups: tuple[int, ...] = ()
    name: str = ""  # the user's name, where it has one

    @property
    def who(self) -> str:
        return f"user {self.name}" if self.name else f"uid {self.uid}"

    def member(self, gid: int | None) -> bool:
        return gid is not None and (gid == self.gid or gid in self.groups)


@dataclass(frozen=True)
class Access:
    daemon_uid: int
    group: int  # full access
    readonly_group: int | None = None
    group_name: str = ""  # the groups' names, for refusals
    readonly_name: str = ""

    def named(self, gid: int | None, name: str) -> str:
        return f"group {name}" if name else f"group {gid}"


def may_connect(peer: Peer, access: Access) -> bool:
    return peer.uid in (0, access.daemon_uid) or peer.member(access.group) \
        or peer.member(access.readonly_group)


def authorize(peer: Peer, access: Access, command: str) -> str | None:
    """None if allowed, else the reason to give the peer."""
    if peer.uid in (0, access.daemon_uid) or peer.member(access.group):
        return None
    if peer.member(access.readonly_group):
        if command in READ_ONLY:
            return None
        return (f"Permission denied: {peer.who} may only use show (a member of the read-only"
                f" {access.named(access.readonly_group, access.readonly_name)}); {command}"
                f" needs root or a member of {access.named(access.group, access.group_name)}")
    return (f"Permission denied: {peer.who} is neither root nor a member of"
            f" {access.named(access.group, access.group_name)}; ask to be added to it")
