"""Token shards on disk: how a tokenised split is stored, written and read back.

A split's catalogue rows are cut into shards of ``shard_size`` rows (shard ``k`` holds the kept
galaxies of rows ``[k*shard_size, (k+1)*shard_size)``). Under the split's folder:

* ``shards/00042.npy``: ``(n_kept, T, D)`` tokens in the storage dtype, spiral order, openable
  with ``np.load(..., mmap_mode="r")``; ``shards/00042.json``: its record (galaxies, rejects,
  fixes and a fingerprint of what the tokens depend on), written last: it marks the shard done.
  :class:`ShardWriter` writes both, each under a temporary name and renamed;
  :func:`read_shard_record` finds a finished one again;
* ``parts/0003-of-0016.*``: what tokenise job 3 of 16 wrote (:func:`part_name`);
* ``index.parquet`` (``id, split, shard, row``), ``meta.json`` and ``rejected.csv``: the
  joined split (:func:`astropt.tokenise.merge_token_groups`).

:func:`load_tokens` opens a split as one lazily read array (:class:`ShardedTokens`) with its
ids and meta (:class:`TokenSplit`). Only numpy and pandas are imported: the workflow's parse
uses :func:`part_name`.

Example::

    split = load_tokens(Path("results/tokens/train"))
    batch = split.tokens.take(np.array([0, 5, 9]))   # (3, T, D), the stored dtype
"""

from __future__ import annotations

import io
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astropt.io import atomic_write, tmp_suffix

__all__ = [
    "SHARD_FORMAT",
    "ShardedTokens",
    "TokenSplit",
    "ShardWriter",
    "load_tokens",
    "read_shard_record",
    "n_shards",
    "group_shards",
    "part_name",
    "parse_part_name",
    "shard_stem",
]

SHARD_FORMAT = 1
"""Version of the shard layout below; a shard written under another version is re-tokenised."""


class ShardedTokens:
    """The token shards of a split seen as one ``(N, T, D)`` array, read lazily.

    Rows are numbered across the shards in order (shard 0's rows first). Indexing with an
    int, a slice or an integer array (optionally followed by indices of the other axes, e.g.
    ``tokens[a:b, :64]``) returns a numpy array; a slice inside one shard is a view of its
    memory map. :meth:`take` gathers rows straight into a caller's buffer.

    Each shard is a ``.npy`` file, memory-mapped on first use (its shape and dtype checked
    then). Each open map holds a file descriptor, so at most ``max_open`` stay open (least
    recently used closed first): the paper's training split has over 4,000 shards.

    Args:
        paths: The shard files, in order.
        lengths: Rows of each shard.
        row_shape: ``(T, D)`` of one galaxy's tokens.
        dtype: Storage dtype of every shard.
        max_open: Most memory maps kept open at once.
    """

    ndim = 3

    def __init__(self, paths: list[Path], lengths: list[int], row_shape: tuple[int, int], dtype,
                 max_open: int = 1024) -> None:
        if not paths or len(paths) != len(lengths):
            raise ValueError(f"ShardedTokens needs one length per shard file ({len(paths)} files, "
                             f"{len(lengths)} lengths)")
        self.offsets = np.cumsum([0, *lengths]).astype(np.int64)
        self.shape = (int(self.offsets[-1]), *tuple(row_shape))
        self.dtype = np.dtype(dtype)
        self._paths = [Path(p) for p in paths]
        self._arrays: list[np.ndarray | None] = [None] * len(paths)
        self._max_open = max(1, int(max_open))
        self._lru: "OrderedDict[int, None]" = OrderedDict()

    @property
    def n_shards(self) -> int:
        return len(self._arrays)

    def shard(self, k: int) -> np.ndarray:
        """Shard ``k``'s array (memory-mapped now if it is not open yet)."""
        a = self._arrays[k]
        if a is None:
            path = self._paths[k]
            a = np.load(path, mmap_mode="r")
            expect = (int(self.offsets[k + 1] - self.offsets[k]), *self.shape[1:])
            if a.shape != expect or a.dtype != self.dtype:
                raise ValueError(f"token shard {path} is {a.shape} {a.dtype}, its split's meta.json lists {expect} {self.dtype}")
            self._arrays[k] = a
            if len(self._lru) >= self._max_open:
                old, _ = self._lru.popitem(last=False)
                self._arrays[old] = None  # closed once no view of it is left
        self._lru[k] = None
        self._lru.move_to_end(k)
        return a

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ShardedTokens(shape={self.shape}, dtype={self.dtype}, shards={self.n_shards})"

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """Every row in memory (a whole split: mind its size)."""
        out = self.take(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)

    def _rows(self, rows) -> np.ndarray:
        """Row indices as int64, negative ones counted from the end, checked."""
        rows = np.asarray(rows)
        if rows.size and rows.dtype.kind not in "iu":  # a boolean mask would be read as rows 0 and 1
            raise IndexError(f"galaxy indices must be integers, not {rows.dtype}")
        rows = rows.astype(np.int64, copy=False).reshape(-1)
        rows = np.where(rows < 0, rows + len(self), rows)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            bad = int(((rows < 0) | (rows >= len(self))).sum())
            raise IndexError(f"{bad} galaxy indices outside 0..{len(self) - 1} (or -{len(self)}..-1)")
        return rows

    def take(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` (any order) as ``(len(rows), T, D)``, written into ``out`` if given.

        Sorted rows are fastest (what the training loader passes): each shard hit is read with
        one ``np.take`` in file order straight into ``out`` (no intermediate array).
        """
        rows = self._rows(rows)
        if out is None:
            out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        if len(rows) > 1 and np.any(rows[1:] < rows[:-1]):  # unsorted: gather sorted, then place
            order = np.argsort(rows, kind="stable")
            out[order] = self.take(rows[order])
            return out
        if not len(rows):
            return out
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        if shard[0] == shard[-1]:  # the usual case on a small split: one np.take
            k = int(shard[0])
            np.take(self.shard(k), rows - self.offsets[k], axis=0, out=out, mode="clip")
            return out
        cuts = np.flatnonzero(shard[1:] != shard[:-1]) + 1  # only the shards hit
        for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(rows)]):
            k = int(shard[a])
            np.take(self.shard(k), rows[a:b] - self.offsets[k], axis=0, out=out[a:b], mode="clip")
        return out

    def __getitem__(self, key):
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            i = int(self._rows([key])[0])
            k = int(np.searchsorted(self.offsets, i, side="right") - 1)
            return self.shard(k)[(i - int(self.offsets[k]), *rest)]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1 and stop > start:  # each shard's piece sliced before it is read
                first, last = np.searchsorted(self.offsets, [start, stop - 1], side="right") - 1
                pieces = [
                    self.shard(k)[(slice(max(start - int(self.offsets[k]), 0),
                                         min(stop, int(self.offsets[k + 1])) - int(self.offsets[k])), *rest)]
                    for k in range(int(first), int(last) + 1)
                ]
                return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)  # one shard: a view
            rows = np.arange(start, stop, step)
        else:
            rows = self._rows(key)
        out = self.take(rows)
        return out[(slice(None), *rest)] if rest else out


@dataclass
class TokenSplit:
    """A tokenised split read back from disk (:func:`load_tokens`).

    Attributes:
        tokens: The split's shards as one lazily read ``(N, T, D)`` array
            (:class:`ShardedTokens`), spiral order, in the stored dtype (``meta["dtype"]``).
        ids: Galaxy ids (str), one per row of ``tokens``.
        meta: Contents of ``meta.json`` (patch_size, image_size, n_chan, n_tokens, dtype,
            shards, counts...).
    """

    tokens: ShardedTokens = field(repr=False)
    ids: np.ndarray = field(repr=False)
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.ids)


def n_shards(n_galaxies: int, shard_size: int) -> int:
    """Shards of a split of ``n_galaxies`` catalogue rows (shard ``k`` holds rows ``[kS, (k+1)S)``)."""
    return -(-int(n_galaxies) // int(shard_size))


def group_shards(n_shards_: int, group: int, groups: int) -> range:
    """The contiguous shards tokenised by job ``group`` of ``groups`` (possibly none)."""
    if not 0 <= group < groups:
        raise ValueError(f"group {group} is not in 0..{groups - 1}")
    return range(group * n_shards_ // groups, (group + 1) * n_shards_ // groups)


def part_name(group: int, groups: int) -> str:
    """Stem of the files a tokenise job writes under ``<split>/parts/``: ``0003-of-0016``."""
    return f"{group:04d}-of-{groups:04d}"


def shard_stem(k: int) -> str:
    """File stem of shard ``k``: ``00042``."""
    return f"{k:05d}"


def parse_part_name(part: str) -> tuple[int, int]:
    """``(group, groups)`` of a part's stem (the tokenise rule's ``part`` wildcard):
    ``"0003-of-0016"`` -> ``(3, 16)``; the inverse of :func:`part_name`."""
    group, groups = (int(x) for x in part.split("-of-"))
    return group, groups


def read_shard_record(shard_dir: Path, k: int, fingerprint: str, row_shape: tuple[int, int], dtype) -> dict | None:
    """The record of shard ``k`` if an earlier run finished it with this fingerprint (and its
    ``.npy`` holds the rows the record lists)."""
    stem = shard_stem(k)
    done, npy = shard_dir / f"{stem}.json", shard_dir / f"{stem}.npy"
    try:
        record = json.loads(done.read_text())
        if record.get("fingerprint") != fingerprint or record.get("format") != SHARD_FORMAT:
            return None
        if _npy_header(npy) != ((len(record["ids"]), *row_shape), np.dtype(dtype)):
            return None
        return record
    except (OSError, ValueError, KeyError):
        return None


class ShardWriter:
    """Writes one job's token shards, one at a time, so that a killed job loses only the shard
    it was writing and never leaves a half-written one that looks done.

    :meth:`start` opens shard ``k``'s rows as a memory map under a temporary name unique to
    this process on any node (the jobs of a split share the folder, perhaps over NFS) and
    deletes its old record; :meth:`add` fills the next rows; :meth:`finish` cuts the file to
    the rows written, renames it into place and then writes the record (``record``: format,
    fingerprint, shard, ``ids`` kept, ``rejected`` rows, ``fixed`` counts, filled by the
    caller). Used as a context manager, it removes its unfinished files on the way out.

    Args:
        shard_dir: The split's ``shards/`` folder.
        row_shape: ``(T, D)`` of one galaxy's tokens.
        dtype: Storage dtype.
    """

    def __init__(self, shard_dir: Path, row_shape: tuple[int, int], dtype) -> None:
        self.shard_dir, self.row_shape, self.dtype = Path(shard_dir), tuple(row_shape), np.dtype(dtype)
        self.tmp_suffix = tmp_suffix()
        self.record: dict[str, Any] = {}
        self._npy: Path | None = None
        self._mm: np.ndarray | None = None

    @property
    def writing(self) -> bool:
        """Whether a shard is started and not finished."""
        return self._npy is not None

    def start(self, k: int, n_rows: int, fingerprint: str, fixes: tuple[str, ...]) -> None:
        """Open shard ``k`` for at most ``n_rows`` galaxies; ``fixes`` name its fix counters."""
        (self.shard_dir / f"{shard_stem(k)}.json").unlink(missing_ok=True)  # no record for a changing .npy
        self._npy = self.shard_dir / (shard_stem(k) + ".npy" + self.tmp_suffix)
        self.record = {"format": SHARD_FORMAT, "fingerprint": fingerprint, "shard": k,
                       "ids": [], "rejected": [], "fixed": dict.fromkeys(fixes, 0)}
        self._mm = np.lib.format.open_memmap(self._npy, mode="w+", dtype=self.dtype, shape=(n_rows, *self.row_shape))

    def add(self, tokens: np.ndarray) -> None:
        """Write ``tokens`` as the rows after the galaxies kept so far (``record["ids"]``)."""
        row = len(self.record["ids"])
        self._mm[row : row + len(tokens)] = tokens

    def finish(self) -> dict[str, Any]:
        """Cut the shard to its kept rows, rename it into place, write its record; return it."""
        mm, self._mm = self._mm, None
        mm.flush()
        del mm
        n_ok = len(self.record["ids"])
        _shrink_npy(self._npy, (n_ok, *self.row_shape), self.dtype)
        stem = shard_stem(self.record["shard"])
        os.replace(self._npy, self.shard_dir / f"{stem}.npy")
        record, self.record, self._npy = self.record, {}, None
        # the record last: it marks the shard done
        atomic_write(self.shard_dir / f"{stem}.json", lambda p: p.write_text(json.dumps(record) + "\n"))
        return record

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._mm = None
        if self._npy is not None:
            self._npy.unlink(missing_ok=True)
            self._npy = None
        for stray in self.shard_dir.glob(f"*{self.tmp_suffix}"):
            stray.unlink(missing_ok=True)


def _shrink_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Cut a C-order .npy file down to its first ``shape[0]`` rows (header rewritten)."""
    fmt = np.lib.format
    with open(path, "r+b") as f:
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        old_shape, _, _ = read(f)
        offset = f.tell()
        if tuple(old_shape) == tuple(shape):
            return
        header = io.BytesIO()
        d = {"descr": fmt.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        if version == (1, 0):
            fmt.write_array_header_1_0(header, d)
        else:
            fmt.write_array_header_2_0(header, d)
        n_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if len(header.getvalue()) == offset:  # numpy pads headers, so it fits in place
            f.seek(0)
            f.write(header.getvalue())
            f.truncate(offset + n_bytes)
            return
    _copy_rows(path, shape, dtype)  # header length changed (old numpy)


def _copy_rows(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Stream the first ``shape[0]`` rows of a .npy file into a fresh one that replaces it."""
    fmt = np.lib.format

    def copy(fresh: Path) -> None:
        src = np.load(path, mmap_mode="r")
        out = fmt.open_memmap(fresh, mode="w+", dtype=dtype, shape=shape)
        for i in range(0, shape[0], 1024):
            j = min(i + 1024, shape[0])
            out[i:j] = src[i:j]
        out.flush()
        del out, src

    atomic_write(path, copy)


def _open_file_budget(wanted: int) -> int:
    """Memory maps a process may keep open: half of what its open-file limit leaves after some
    headroom, the soft limit first raised towards the hard one if ``wanted`` needs more."""
    headroom = 256
    try:
        import resource
    except ImportError:  # not on POSIX
        return max(8, min(wanted, 256))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    if soft < 2 * wanted + headroom:
        target = 2 * wanted + headroom if hard == resource.RLIM_INFINITY else min(hard, 2 * wanted + headroom)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # not allowed: live with the soft limit
            pass
    return max(8, min(wanted, (soft - headroom) // 2))


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a .npy file, from its header alone."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(f)
    return tuple(shape), np.dtype(dtype)


def load_tokens(split_dir: str | os.PathLike) -> TokenSplit:
    """Open a split written by the tokenise jobs and :func:`astropt.tokenise.merge_token_groups`,
    given as its folder or its manifest ``index.parquet`` (the ``token_index`` rule's output,
    which the ``train`` and ``embed`` rules name as their inputs).

    Every shard's header is checked against ``meta.json``; the shards are memory-mapped
    (read-only) when first read, at most as many at a time as the process's open-file limit
    allows (which is raised towards its hard limit if needed).

    Raises:
        FileNotFoundError: If the folder, its index, meta or a shard is missing.
        ValueError: If the index and the shards disagree.
    """
    split_dir = Path(split_dir)
    if split_dir.name == "index.parquet":
        split_dir = split_dir.parent
    needed = [split_dir / n for n in ("index.parquet", "meta.json")]
    absent = [p.name for p in needed if not p.is_file()]
    if absent:
        raise FileNotFoundError(
            f"Tokenised split {split_dir} is missing {', '.join(absent)}; run the tokenise rule first"
        )
    index = pd.read_parquet(needed[0], columns=["id", "row"])
    meta = json.loads(needed[1].read_text())
    if "shards" not in meta:
        raise ValueError(f"{split_dir} was tokenised by an older version (no shards in meta.json): tokenise it again")
    row_shape, dtype = (meta["n_tokens"], meta["token_dim"]), np.dtype(meta["dtype"])
    paths, lengths = [], []
    for s in meta["shards"]:
        path = split_dir / s["file"]
        if not path.is_file():
            raise FileNotFoundError(f"token shard {path} listed in {needed[1]} is missing: tokenise the split again")
        shape, got = _npy_header(path)
        if shape != (s["n"], *row_shape) or got != dtype:
            raise ValueError(f"token shard {path} is {shape} {got}, {needed[1]} lists {(s['n'], *row_shape)} {dtype}")
        paths.append(path)
        lengths.append(s["n"])
    tokens = ShardedTokens(paths, lengths, row_shape, dtype, max_open=_open_file_budget(len(paths)))
    expect = np.concatenate([np.arange(n) for n in lengths]) if lengths else np.zeros(0)
    if len(index) != len(tokens):
        raise ValueError(f"{split_dir}: index.parquet lists {len(index)} galaxies but the shards hold {len(tokens)}")
    if not np.array_equal(index["row"].to_numpy(), expect):
        raise ValueError(f"{split_dir}: index.parquet's rows do not follow the shards' order; rerun token_index")
    return TokenSplit(tokens=tokens, ids=np.asarray(index["id"].astype(str).tolist(), dtype=str), meta=meta)
