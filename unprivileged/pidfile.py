"""The PID file: created while still root, written when ready, removed at exit."""

from __future__ import annotations

import os


class PidFile:
    """Opened (and chowned to the -p user) before privileges are dropped.

    The file is empty until write() says we are ready. At exit it is
    unlinked; when the dropped user may not unlink in its directory, it is
    emptied instead, so it never names a dead process.
    """

    def __init__(self, path: str, fd: int, created: bool) -> None:
        self.path = path
        self.fd = fd
        self.created = created  # the file did not exist before us
        self.written = False

    @classmethod
    def create(cls, path: str, uid: int | None, gid: int | None) -> PidFile:
        """Open (not truncate: another daemon may still own it) until write()."""
        flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd, created = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            fd, created = os.open(path, flags), False
        if uid is not None and gid is not None:
            os.fchown(fd, uid, gid)
        return cls(path, fd, created)

    def write(self) -> None:
        """Say we are ready (again): our pid in the file, its mtime now.

        If someone deleted the file meanwhile it is created anew, where our
        credentials still allow that.
        """
        try:
            same = os.path.samestat(os.stat(self.path), os.fstat(self.fd))
        except FileNotFoundError:
            same = False
        if not same:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                         | os.O_NOFOLLOW, 0o644)
            os.close(self.fd)
            self.fd = fd
        data = f"{os.getpid()}\n".encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.utime(self.fd)
        self.written = True

    def remove(self) -> str | None:
        """Unlink (or empty) the file; say why it could only be emptied. A
        file we never wrote to is left as it was (unless we created it)."""
        if not self.written and not self.created:
            os.close(self.fd)
            return None
        why = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            os.ftruncate(self.fd, 0)
            why = f"Cannot remove PID file {self.path} ({exc.strerror}), left it empty"
        os.close(self.fd)
        return why
