"""POSIX ACLs as the kernel stores them (system.posix_acl_* xattrs), so the agent can set them on an
open file descriptor: no path lookup, so no symlink a user planted can redirect the change."""

from __future__ import annotations

import struct
from dataclasses import dataclass

ACCESS = "system.posix_acl_access"
DEFAULT = "system.posix_acl_default"
_VERSION = 2
_UNDEFINED_ID = 0xFFFFFFFF
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
RWX, RX, RW, R = 7, 5, 6, 4


@dataclass(frozen=True)
class Acl:
    owner: int
    group: int
    other: int
    users: tuple[tuple[int, int], ...] = ()   # (uid, perms), sorted
    groups: tuple[tuple[int, int], ...] = ()  # (gid, perms), sorted
    mask: int | None = None

    def encode(self) -> bytes:
        entries = [(USER_OBJ, self.owner, _UNDEFINED_ID)]
        entries += [(USER, perm, uid) for uid, perm in self.users]
        entries.append((GROUP_OBJ, self.group, _UNDEFINED_ID))
        entries += [(GROUP, perm, gid) for gid, perm in self.groups]
        if self.mask is not None or self.users or self.groups:
            entries.append((MASK, RWX if self.mask is None else self.mask, _UNDEFINED_ID))
        entries.append((OTHER, self.other, _UNDEFINED_ID))
        return struct.pack("<I", _VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)

    def for_file(self, executable: bool) -> Acl:
        """The access ACL of a regular file in the tree: no execute unless the file already has it."""
        def cap(perm: int) -> int:
            return perm if executable else perm & RW
        return Acl(cap(self.owner), cap(self.group), cap(self.other),
                   tuple((i, cap(p)) for i, p in self.users), tuple((i, cap(p)) for i, p in self.groups),
                   None if self.mask is None else cap(self.mask))


def decode(blob: bytes | None) -> Acl | None:
    if not blob or len(blob) < 4 or (len(blob) - 4) % 8:
        return None
    owner = group = other = 0
    mask: int | None = None
    users: list[tuple[int, int]] = []
    groups: list[tuple[int, int]] = []
    for offset in range(4, len(blob), 8):
        tag, perm, ident = struct.unpack_from("<HHI", blob, offset)
        if tag == USER_OBJ:
            owner = perm
        elif tag == USER:
            users.append((ident, perm))
        elif tag == GROUP_OBJ:
            group = perm
        elif tag == GROUP:
            groups.append((ident, perm))
        elif tag == MASK:
            mask = perm
        elif tag == OTHER:
            other = perm
    return Acl(owner, group, other, tuple(sorted(users)), tuple(sorted(groups)), mask)


def tree_acl(*, group_obj: int, writer_uids: set[int], writer_gids: set[int], reader_uids: set[int],
             reader_gids: set[int]) -> Acl:
    """Writers rwx, readers r-x (a writer is never demoted to reader), everyone else r-x."""
    users = {uid: RX for uid in reader_uids} | {uid: RWX for uid in writer_uids}
    groups = {gid: RX for gid in reader_gids} | {gid: RWX for gid in writer_gids}
    return Acl(RWX, group_obj, RX, tuple(sorted(users.items())), tuple(sorted(groups.items())), RWX)
