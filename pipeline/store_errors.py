"""The workspace's errors: one exception type whose message names the table or file, and the one
message for a write that found no room on the disk."""

from __future__ import annotations

import errno
import os

from schemas.errors import SynprefError

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""errnos of a write that found no room: no space left, over quota, over a file-size limit."""


class WorkspaceError(SynprefError, RuntimeError):
    """A workspace operation failed (rows that do not fit the schema, a damaged part); the message
    names the table or file."""


def disk_full_error(target: str, size: int | None, exc: OSError) -> WorkspaceError:
    """The one message for a write that found no room (`exc.errno` in DISK_FULL)."""
    reason = os.strerror(exc.errno) if exc.errno else exc.strerror  # Arrow's strerror is a sentence
    what = f"{size} bytes: {reason}" if size is not None else reason
    return WorkspaceError(
        f"disk full: could not write {target} ({what}); nothing was "
        f"published, the workspace keeps what was committed before: free space and run the "
        f"command again")


def raise_if_disk_full(exc: BaseException, target: str) -> None:
    """Re-raise `exc` as the disk-full message when it is one (an OSError with a DISK_FULL errno,
    Arrow's writers included); return otherwise, for the caller to raise it as it is."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        raise disk_full_error(target, None, exc) from exc
