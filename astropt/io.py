"""Files and logs of a workflow job: writing a file atomically (to a temporary file beside
it, then renaming that over it), plain JSON from NumPy values, a workflow script's log,
progress lines and the durations they show, and an ordered process pool.

Example::

    from astropt.io import atomic_write

    atomic_write("results/probes/summary.csv", lambda tmp: table.to_csv(tmp, index=False))
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import math
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["Progress", "atomic_write", "duration", "in_order", "runs_text", "script_log", "tmp_suffix", "to_jsonable"]


def runs_text(n: int) -> str:
    """``"1 run"``, ``"3 runs"``: a count of runs as summaries and figures write it."""
    return f"{n} run{'s' if n != 1 else ''}"


def duration(seconds: float) -> str:
    """A duration for a progress line: ``"45s"``, ``"12m05s"``, ``"3h07m"``."""
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


class Progress:
    """Progress lines about every 10 % of ``total`` galaxies: count, rate, ETA and, once
    :meth:`update` is given rejects, the rejects so far."""

    def __init__(self, total: int, log: Callable[[str], Any]) -> None:
        self.total, self.log = total, log
        self.t0, self.done, self.next_log, self.rejected = time.perf_counter(), 0, 0.1, None

    def update(self, n: int, n_rejected: int | None = None) -> None:
        self.done += n
        if n_rejected is not None:
            self.rejected = (self.rejected or 0) + n_rejected
        done, total = self.done, self.total
        if done / total >= self.next_log or done == total:
            rate = done / max(time.perf_counter() - self.t0, 1e-9)
            rejected = "" if self.rejected is None else f", {self.rejected} rejected"
            self.log(f"  {done}/{total} galaxies ({100 * done / total:.0f}%), {rate:.0f}/s, "
                     f"ETA {duration((total - done) / rate)}{rejected}")
            while self.next_log <= done / total:
                self.next_log += 0.1


def in_order(tasks: Iterable[tuple], fn: Callable[..., Any], workers: int) -> Iterator[Any]:
    """``fn(*task)`` for each task, in order, on ``workers`` processes, at most ``2 * workers``
    results held at once (so a huge split never piles up in memory)."""
    if workers <= 1:
        for task in tasks:
            yield fn(*task)
        return
    with cf.ProcessPoolExecutor(max_workers=workers) as pool:
        tasks = iter(tasks)
        pending = collections.deque(pool.submit(fn, *t) for _, t in zip(range(2 * workers), tasks))
        while pending:
            result = pending.popleft().result()
            nxt = next(tasks, None)
            if nxt is not None:
                pending.append(pool.submit(fn, *nxt))
            yield result


def tmp_suffix() -> str:
    """A temporary file's suffix, ``.tmp-<host>-<pid>-<random>``: unique to the call across
    threads, processes and nodes sharing a folder (see :func:`atomic_write`)."""
    return f".tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


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
    tmp = path.with_name(path.name + tmp_suffix())
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def script_log(snakemake):
    """In a workflow script: send stdout/stderr to the rule's log, keep torch and the BLAS
    libraries to the job's threads; return a print-and-flush.

    Torch is not imported here (about 2 s per job): jobs that never use it (probes, fits,
    figures, summary) do not pay for it; for those that do, ``OMP_NUM_THREADS`` sets its
    thread count when it is imported.
    """
    threads = max(1, int(snakemake.threads))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if snakemake.log:
        sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

    def log(*args) -> None:
        print(*args, flush=True)

    return log


def to_jsonable(obj: Any) -> Any:
    """Convert a nested structure to plain JSON types.

    NumPy scalars and arrays become Python numbers and lists; NaN and infinities
    become ``None``; tuples become lists; mapping keys become strings.

    Args:
        obj: Any nesting of dicts, lists, tuples, NumPy values and scalars.

    Returns:
        The same structure, accepted by ``json.dumps``.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # a NumPy array or scalar
        obj = obj.tolist()
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj
