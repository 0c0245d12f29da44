"""Files that hold a secret (passwords, the Erlang cookie): never readable by anyone but their owner.

    write_private(home / "secrets.json", text)             # 0600 from the moment the file exists
    write_private(data / ".erlang.cookie", cookie, 0o400)

The file is created under a temporary name with ``O_CREAT | O_EXCL`` and its final mode (so there is no moment,
whatever the umask, at which another user could open it), written, flushed to disk and renamed over ``path``. A
crash before the rename leaves the old file (or none) and a hidden temporary file; readers never see a part.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

PRIVATE = 0o600


def write_private(path: Path, text: str, mode: int = PRIVATE) -> None:
    """Replace ``path`` with ``text`` in a file created with ``mode`` (at most the owner's read and write)."""
    if mode & 0o077:
        raise ValueError(f"{path}: mode {mode:o} would let others read a secret")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), mode)  # exactly ``mode``: the umask may only have narrowed it
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
