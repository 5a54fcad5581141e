"""Writing a file atomically: to a temporary file beside it, then renaming that over it.

Example::

    from astropt.io import atomic_write

    atomic_write("results/probes/summary.csv", lambda tmp: table.to_csv(tmp, index=False))
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``.

    A file at ``path`` is therefore complete: an error or a crash leaves the old file (or
    none), never a partial one. The temporary file is in the same folder (the same file
    system, so the rename is atomic) and is named ``<name>.tmp-<host>-<pid>-<random>``:
    unique to the call across threads, processes and nodes sharing the folder, and matched
    by ``.gitignore``'s ``*.tmp-*`` and by the tokeniser's sweep of stale temporary files.
    Its name does not end in ``path``'s suffix, so ``write`` must not choose a format from
    the extension.

    Args:
        path: The file to write; parent folders are created.
        write: Called with the temporary file's path; writes the whole content there
            (extras such as an fsync belong in it).

    Raises:
        Whatever ``write`` or the rename raises (KeyboardInterrupt included), after
        removing the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
