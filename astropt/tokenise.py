"""Patch tokenisation of galaxy stamps: patchify, AstroPT v1 spiral order, normalisation.

Follows AstroPT v1.0.0 (arXiv:2405.14930, ``astropt/local_datasets.py``):

* an image is cut into ``p x p`` patches read in raster order, each patch flattened with the
  channel fastest, ``(h p1) (w p2) c -> (h w) (p1 p2 c)``;
* patches are reordered into v1's spiral: v1's ``_spiral(n)`` walks the raster index grid
  outside-in and clockwise (top row rightwards, right column down, bottom row leftwards, left
  column up, then the next ring in) and reverses that walk, so token 0 is the centre patch and
  the last token is the top-left corner. Released checkpoints expect exactly this order;
* each patch is standardised on its own, ``(x - mean) / (std + eps)`` over its ``p*p*C`` values
  with torch's default (unbiased) std. ``normalise(..., mode="image")`` standardises over a
  whole image instead, which separates model sizes better on clean synthetic stamps (the
  default config's choice; see config/README.md).

It also turns a split of stamps (PNG/JPEG/FITS files or images inside parquet shards, read by
:mod:`astropt.images`) into memory-mappable token shards on disk, once, so training reads tokens
without decoding images: ``uint8`` for 8-bit images, ``float16``/``float32`` for FITS. A split's
catalogue rows are cut into shards of ``shard_size`` rows; :func:`tokenise_group` writes one
job's run of shards (the workflow runs one job per shard group, e.g. one per SLURM task), reusing
shards an interrupted earlier run finished; :func:`merge_token_groups` joins the jobs' parts into
the split's ``index.parquet`` (id, split, shard, row) and ``meta.json``; :func:`tokenise_split`
does both in one call; :func:`load_tokens` opens the shards as one lazily read array
(:class:`ShardedTokens`). Bad stamps (corrupt, truncated, another size or band count, NaN pixels,
repeated ids) are skipped, cropped, resized or zeroed as asked and listed with their reason.
Normalisation happens at training time, on the training device.

Example::

    order = spiral_order(4)            # [9, 10, 6, 5, 4, 8, 12, ...]
    tokens = image_to_tokens(img, 8)   # (64, 64, 3) uint8 -> (64, 192) spiral order
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import io
import json
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pandas as pd
import torch

from astropt.config import REJECTED_COLUMNS
from astropt.images import FITS_SUFFIXES, ReadOptions, is_fits, read_stamps
from astropt.io import atomic_write

ArrayLike = np.ndarray | torch.Tensor

__all__ = [
    "spiral_order",
    "patchify",
    "unpatchify",
    "image_to_tokens",
    "tokens_to_image",
    "normalise",
    "tokenise_split",
    "tokenise_group",
    "merge_token_groups",
    "load_tokens",
    "TokenSplit",
    "ShardedTokens",
    "n_shards",
    "group_shards",
    "part_name",
    "FITS_SUFFIXES",
    "is_fits",
]


# ---------------------------------------------------------------------------------------------
# Spiral order
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _spiral_order_cached(n: int) -> np.ndarray:
    grid = np.arange(n * n, dtype=np.int64).reshape(n, n)
    walk = []  # outside-in clockwise walk over the rings, starting top-left
    while grid.size:
        walk.append(grid[0, :])  # top row, left -> right
        walk.append(grid[1:, -1])  # right column, top -> bottom
        if grid.shape[0] > 1:
            walk.append(grid[-1, :-1][::-1])  # bottom row, right -> left
        if grid.shape[1] > 1:
            walk.append(grid[1:-1, 0][::-1])  # left column, bottom -> top
        grid = grid[1:-1, 1:-1]
    order = np.concatenate(walk)[::-1].copy()  # reversed: centre first
    order.setflags(write=False)
    return order


def spiral_order(n: int) -> np.ndarray:
    """Raster indices of an ``n x n`` patch grid in AstroPT v1's centre-out spiral order.

    ``spiral_tokens = raster_tokens[spiral_order(n)]``: token ``k`` of the spiral sequence is
    raster patch ``spiral_order(n)[k]``. Token 0 is the centre patch (for even ``n``, the
    lower-left of the four central patches); the last token is the top-left corner.

    Args:
        n: Side of the square patch grid (patches per row).

    Returns:
        Read-only int64 array of length ``n * n`` (cached per ``n``).

    Raises:
        ValueError: If ``n`` is not a positive integer.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"spiral_order needs a positive integer grid side, got {n!r}")
    return _spiral_order_cached(int(n))


# ---------------------------------------------------------------------------------------------
# Patchify / unpatchify
# ---------------------------------------------------------------------------------------------
def _permute(x: ArrayLike, axes: tuple[int, ...]) -> ArrayLike:
    return x.permute(*axes) if isinstance(x, torch.Tensor) else np.transpose(x, axes)


def patchify(images: ArrayLike, patch_size: int) -> ArrayLike:
    """Cut HWC images into flattened patches in raster order.

    Layout ``(h p1) (w p2) c -> (h w) (p1 p2 c)``: the channel varies fastest, then the column
    inside the patch, then the row. A pure reshape/transpose; dtype is kept.

    Args:
        images: One image ``(H, W, C)`` or a batch ``(B, H, W, C)``; numpy array or torch tensor.
        patch_size: Patch side ``p`` in pixels; must divide ``H`` and ``W``.

    Returns:
        ``(T, D)`` or ``(B, T, D)`` with ``T = (H / p) * (W / p)`` and ``D = p * p * C``.

    Raises:
        ValueError: On a wrong number of dimensions or a size not divisible by ``patch_size``.
    """
    if images.ndim not in (3, 4):
        raise ValueError(
            f"patchify expects (H, W, C) or (B, H, W, C) images, got shape {tuple(images.shape)}"
        )
    single = images.ndim == 3
    x = images[None] if single else images
    B, H, W, C = x.shape
    p = int(patch_size)
    if p < 1 or H % p or W % p:
        raise ValueError(
            f"Image height ({H}) and width ({W}) must be divisible by the patch size ({p})"
        )
    h, w = H // p, W // p
    x = x.reshape(B, h, p, w, p, C)
    x = _permute(x, (0, 1, 3, 2, 4, 5))  # (B, h, w, p1, p2, C)
    x = x.reshape(B, h * w, p * p * C)
    return x[0] if single else x


def unpatchify(
    tokens: ArrayLike,
    patch_size: int,
    grid: tuple[int, int] | None = None,
    n_chan: int = 3,
) -> ArrayLike:
    """Inverse of :func:`patchify`: raster-ordered patches back to HWC images.

    Args:
        tokens: ``(T, D)`` or ``(B, T, D)`` patches in raster order.
        patch_size: Patch side ``p`` in pixels.
        grid: ``(h, w)`` patches per column and row; ``None`` for a square grid.
        n_chan: Number of channels ``C``.

    Returns:
        ``(H, W, C)`` or ``(B, H, W, C)`` with ``H = h * p`` and ``W = w * p``.

    Raises:
        ValueError: If the token shape does not match the grid, patch size and channels.
    """
    if tokens.ndim not in (2, 3):
        raise ValueError(f"unpatchify expects (T, D) or (B, T, D), got {tuple(tokens.shape)}")
    single = tokens.ndim == 2
    x = tokens[None] if single else tokens
    B, T, D = x.shape
    p = int(patch_size)
    if grid is None:
        side = math.isqrt(T)
        if side * side != T:
            raise ValueError(f"{T} tokens do not form a square grid; pass grid=(h, w)")
        grid = (side, side)
    h, w = grid
    if h * w != T or p * p * n_chan != D:
        raise ValueError(
            f"Tokens of shape (T={T}, D={D}) do not match grid {h}x{w}, "
            f"patch size {p} and {n_chan} channels (expected T={h * w}, D={p * p * n_chan})"
        )
    x = x.reshape(B, h, w, p, p, n_chan)
    x = _permute(x, (0, 1, 3, 2, 4, 5))  # (B, h, p1, w, p2, C)
    x = x.reshape(B, h * p, w * p, n_chan)
    return x[0] if single else x


def image_to_tokens(image: ArrayLike, patch_size: int) -> ArrayLike:
    """Patchify square HWC image(s) and put the patches into spiral order.

    Args:
        image: ``(H, W, C)`` or ``(B, H, W, C)`` with ``H == W``.
        patch_size: Patch side in pixels.

    Returns:
        ``(T, D)`` or ``(B, T, D)`` tokens, token 0 the centre patch.

    Raises:
        ValueError: If the patch grid is not square.
    """
    tokens = patchify(image, patch_size)
    H, W = image.shape[-3], image.shape[-2]
    if H != W:
        raise ValueError(f"Spiral order needs a square image, got height {H} and width {W}")
    order = spiral_order(H // patch_size)
    if isinstance(tokens, torch.Tensor):
        return tokens[..., torch.from_numpy(order.copy()).to(tokens.device), :]
    return tokens[..., order, :]


def tokens_to_image(tokens: ArrayLike, patch_size: int, n_chan: int = 3) -> ArrayLike:
    """Inverse of :func:`image_to_tokens`: spiral-ordered tokens back to HWC image(s).

    Args:
        tokens: ``(T, D)`` or ``(B, T, D)`` in spiral order (``T`` a square number).
        patch_size: Patch side in pixels.
        n_chan: Number of channels.

    Returns:
        ``(H, W, C)`` or ``(B, H, W, C)``.

    Raises:
        ValueError: If ``T`` is not a square number.
    """
    T = tokens.shape[-2]
    side = math.isqrt(T)
    if side * side != T:
        raise ValueError(f"{T} tokens do not form a square spiral grid")
    inverse = np.argsort(spiral_order(side))
    if isinstance(tokens, torch.Tensor):
        raster = tokens[..., torch.from_numpy(inverse).to(tokens.device), :]
    else:
        raster = tokens[..., inverse, :]
    return unpatchify(raster, patch_size, (side, side), n_chan)


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------
def token_stats(
    x: torch.Tensor, mode: Literal["patch", "image"] = "patch"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and (unbiased) std that :func:`normalise` uses, kept as ``(..., 1, 1)`` per
    image or ``(..., T, 1)`` per patch, for float ``x`` of shape ``(..., T, D)``.

    Two passes (the mean, then the mean squared deviation) rather than ``Tensor.std``: the
    same value to float32 rounding (relative 1e-7), and on a CPU thread about 10x faster
    than torch's single-pass reduction (1.5 against 0.15 ms for a batch of 16 stamps of
    64 x 192 values, this project's 2-core machine), which made it 7 % of a small model's
    training step.
    """
    if mode == "patch":
        dims: tuple[int, ...] = (-1,)
    elif mode == "image":
        dims = (-2, -1)
    else:
        raise ValueError(f"normalise mode must be 'patch' or 'image', got {mode!r}")
    n = math.prod(x.shape[d] for d in dims)
    mean = x.mean(dim=dims, keepdim=True)
    var = (x - mean).square().sum(dim=dims, keepdim=True) / max(n - 1, 1)
    return mean, var.sqrt()


def normalise(
    x: torch.Tensor, mode: Literal["patch", "image"] = "patch", eps: float = 1e-8
) -> torch.Tensor:
    """Standardise raw tokens, on whatever device ``x`` lives.

    Args:
        x: Raw tokens ``(..., T, D)`` (uint8 or float).
        mode: ``"patch"``: the paper's per-patch ``(x - mean) / (std + eps)`` over each patch's
            ``D`` values. ``"image"``: the same over all ``T * D`` values of each image.
        eps: Added to the std (v1 uses 1e-8).

    Returns:
        float32 tensor of the same shape. Std is unbiased (torch's default), as in v1
        (:func:`token_stats`).

    Raises:
        ValueError: On an unknown mode or fewer than two dimensions.
    """
    if x.ndim < 2:
        raise ValueError(f"normalise expects tokens (..., T, D), got shape {tuple(x.shape)}")
    x = x.to(torch.float32)
    mean, std = token_stats(x, mode)
    return (x - mean) / (std + eps)


# ---------------------------------------------------------------------------------------------
# Token shards on disk
# ---------------------------------------------------------------------------------------------
SHARD_FORMAT = 1
"""Version of the shard layout below; a shard written under another version is re-tokenised."""


class ShardedTokens:
    """The token shards of a split seen as one ``(N, T, D)`` array, read lazily.

    Rows are numbered across the shards in order (shard 0's rows first). Indexing with an
    int, a slice or an integer array (optionally followed by indices of the other axes, e.g.
    ``tokens[a:b, :64]``) returns a numpy array; a slice inside one shard is a view of its
    memory map. :meth:`take` gathers rows straight into a caller's buffer.

    Shards given as files (:meth:`open`, what :func:`load_tokens` uses) are memory-mapped on
    first use. Each open map holds a file descriptor, so at most ``max_open`` stay open (least
    recently used closed first): the paper's training split has over 4,000 shards.

    Args:
        shards: One ``(n_k, T, D)`` array per shard, all of the same T, D and dtype.
    """

    ndim = 3

    def __init__(self, shards: list[np.ndarray]) -> None:
        if not shards:
            raise ValueError("ShardedTokens needs at least one shard")
        first = shards[0]
        for k, a in enumerate(shards):
            if a.ndim != 3 or a.shape[1:] != first.shape[1:] or a.dtype != first.dtype:
                raise ValueError(
                    f"shard {k} is {a.shape} {a.dtype}, shard 0 is {first.shape} {first.dtype}"
                )
        self._setup([len(a) for a in shards], first.shape[1:], first.dtype)
        self._arrays: list[np.ndarray | None] = list(shards)
        self._paths: list[Path] | None = None

    @classmethod
    def open(cls, paths: list[Path], lengths: list[int], row_shape: tuple[int, int], dtype,
             max_open: int = 1024) -> "ShardedTokens":
        """Shards in ``.npy`` files of ``lengths`` rows of ``row_shape`` (checked when opened)."""
        if not paths or len(paths) != len(lengths):
            raise ValueError(f"ShardedTokens.open needs one length per shard file ({len(paths)} files, {len(lengths)} lengths)")
        self = cls.__new__(cls)
        self._setup(lengths, tuple(row_shape), np.dtype(dtype))
        self._paths = [Path(p) for p in paths]
        self._arrays = [None] * len(paths)
        self._max_open = max(1, int(max_open))
        from collections import OrderedDict

        self._lru: "OrderedDict[int, None]" = OrderedDict()
        return self

    def _setup(self, lengths: list[int], row_shape: tuple, dtype) -> None:
        self.offsets = np.cumsum([0, *lengths]).astype(np.int64)
        self.shape = (int(self.offsets[-1]), *row_shape)
        self.dtype = np.dtype(dtype)

    @property
    def n_shards(self) -> int:
        return len(self._arrays)

    def shard(self, k: int) -> np.ndarray:
        """Shard ``k``'s array (memory-mapped now if it is a file not open yet)."""
        a = self._arrays[k]
        if self._paths is None:
            return a
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
        if rows.dtype == bool:
            if rows.shape != (len(self),):
                raise IndexError(f"boolean index of shape {rows.shape} does not match {len(self)} galaxies")
            return np.flatnonzero(rows)
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


def _shard_stem(k: int) -> str:
    return f"{k:05d}"


def _tokenise_chunk(
    image_root: str,
    items: list[tuple[str, int]],
    patch_size: int,
    image_size: int,
    opts: ReadOptions = ReadOptions(),
) -> tuple[np.ndarray, list[str], list[str]]:
    """Worker: tokenise ``(path, row)`` items; returns (tokens of the good ones, reasons, notes)."""
    good, reasons, notes = [], [], []
    for img, reason, note in read_stamps(Path(image_root), items, image_size, opts):
        reasons.append(reason)
        notes.append(note)
        if img is not None:
            good.append(image_to_tokens(img, patch_size))
    if good:
        return np.stack(good), reasons, notes
    T = (image_size // patch_size) ** 2
    return np.zeros((0, T, patch_size * patch_size * opts.n_chan), np.dtype(opts.dtype)), reasons, notes


def _in_order(tasks, fn, workers: int):
    """``fn(*task)`` for each task, in order, on ``workers`` processes, at most ``2 * workers``
    results held at once (so a huge split never piles up in memory)."""
    if workers <= 1:
        for task in tasks:
            yield fn(*task)
        return
    from collections import deque

    with cf.ProcessPoolExecutor(max_workers=workers) as pool:
        tasks = iter(tasks)
        pending = deque(pool.submit(fn, *t) for _, t in zip(range(2 * workers), tasks))
        while pending:
            result = pending.popleft().result()
            nxt = next(tasks, None)
            if nxt is not None:
                pending.append(pool.submit(fn, *nxt))
            yield result


def _fmt_s(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


_FIX_NOTES = ("cropped", "resized", "NaN zeroed")


def _count_reasons(reasons: list[str]) -> dict[str, int]:
    return {
        "n_missing": sum(r == "missing file" for r in reasons),
        "n_unreadable": sum(r.startswith(("unreadable", "unsupported", "no image data")) for r in reasons),
        "n_wrong_size": sum(r.startswith("wrong size") for r in reasons),
        "n_wrong_bands": sum(r.startswith("unexpected band count") for r in reasons),
        "n_nan": sum(r.startswith("NaN pixels") for r in reasons),
        "n_out_of_range": sum(r.startswith("values") for r in reasons),
        "n_duplicate": sum(r.startswith("duplicate id") for r in reasons),
    }


def _check_options(fit: str, nan: str, dtype: str, n_chan: int, shard_size: int) -> None:
    for name, value, allowed in (
        ("fit", fit, ("reject", "crop", "resize")),
        ("nan", nan, ("reject", "zero")),
        ("dtype", dtype, ("auto", "uint8", "float16", "float32")),
    ):
        if value not in allowed:
            raise ValueError(f"tokenise: {name} must be one of {list(allowed)}, got {value!r}")
    if int(n_chan) != n_chan or n_chan < 1:
        raise ValueError(f"tokenise: n_chan must be a positive integer, got {n_chan!r}")
    if int(shard_size) != shard_size or shard_size < 1:
        raise ValueError(f"tokenise: shard_size must be a positive integer, got {shard_size!r}")


def _catalogue_items(metadata: pd.DataFrame, where: str) -> tuple[list[str], list[str], list[int]]:
    """ids, image paths and parquet rows (-1 for image files) of a split's catalogue."""
    missing_cols = {"id", "image_path"} - set(metadata.columns)
    if missing_cols:
        raise ValueError(f"metadata lacks column(s) {sorted(missing_cols)}; needs id, image_path")
    if metadata.empty:
        raise ValueError(f"metadata for {where} is empty: no galaxies to tokenise")
    ids = metadata["id"].astype(str).tolist()
    rels = metadata["image_path"].astype(str).tolist()
    if "image_row" in metadata.columns:
        rows = pd.to_numeric(metadata["image_row"]).fillna(-1).astype(np.int64).tolist()
    else:
        rows = [-1] * len(ids)
    return ids, rels, rows


def _duplicates(ids: list[str]) -> dict[int, str]:
    """Positions of repeated ids -> reason naming the first occurrence."""
    first: dict[str, int] = {}
    dup: dict[int, str] = {}
    for i, gid in enumerate(ids):
        if gid in first:
            dup[i] = f"duplicate id (first at catalogue row {first[gid]} of the split)"
        else:
            first[gid] = i
    return dup


def _fingerprint(settings: dict, image_root: Path, ids, rels, rows) -> str:
    """What a shard's tokens depend on: settings, its galaxies and their files' size and
    modification time (so regenerated or replaced images are tokenised again)."""
    import hashlib

    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    stats: dict[str, str] = {}
    for gid, rel, row in zip(ids, rels, rows):
        if rel not in stats:
            try:
                st = (image_root / rel).stat()
                stats[rel] = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stats[rel] = "missing"
        h.update(f"{gid}\0{rel}\0{row}\0{stats[rel]}\n".encode())
    return h.hexdigest()[:24]


def _read_done(shard_dir: Path, k: int, fingerprint: str, row_shape: tuple[int, int], dtype) -> dict | None:
    """The record of shard ``k`` if an earlier run finished it with this fingerprint (and its
    ``.npy`` holds the rows the record lists)."""
    stem = _shard_stem(k)
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


def _resolve_reference(image_root: Path, ids, rels, rows, opts: ReadOptions, image_size, skip) -> int:
    """Stamp side when the config leaves it open: that of the split's first readable stamp."""
    if image_size is not None:
        return int(image_size)
    first_reason = ""
    for i, (rel, row) in enumerate(zip(rels, rows)):
        if i in skip:
            continue
        img, reason, _ = next(read_stamps(image_root, [(rel, row)], None, opts))
        first_reason = first_reason or reason
        if img is not None:
            if img.shape[0] != img.shape[1]:
                raise ValueError(f"{image_root / rel}: stamps must be square, got {img.shape[1]}x{img.shape[0]}")
            return int(img.shape[0])
    raise RuntimeError(
        f"None of the {len(ids)} images under {image_root} could be read, "
        f"e.g. {ids[0]} ({image_root / rels[0]}): {first_reason}"
    )


def tokenise_group(
    metadata: pd.DataFrame,
    image_root: Path,
    out_dir: Path,
    patch_size: int,
    image_size: int | None = None,
    *,
    group: int = 0,
    groups: int = 1,
    shard_size: int = 2048,
    workers: int = 1,
    log: Callable[[str], Any] = print,
    max_reject_fraction: float = 0.5,
    chunk_size: int = 256,
    n_chan: int = 3,
    fit: Literal["reject", "crop", "resize"] = "reject",
    nan: Literal["reject", "zero"] = "reject",
    dtype: Literal["auto", "uint8", "float16", "float32"] = "auto",
    image_column: str = "image",
    split: str = "",
) -> dict[str, Any]:
    """Tokenise job ``group`` of ``groups`` of a split: its shards, and a part index.

    The split's catalogue rows are cut into shards of ``shard_size`` rows (shard ``k`` holds
    the kept galaxies of rows ``[k*shard_size, (k+1)*shard_size)``); job ``group`` tokenises the
    contiguous run of shards :func:`group_shards` gives it, so the tokens never depend on
    ``groups`` or ``workers``. Each shard is written under ``out_dir/shards/`` as
    ``00042.npy`` (``(n_kept, T, D)``, memory-mappable) and then ``00042.json`` (its galaxies,
    rejects and a fingerprint of the settings and input files), both by atomic renames. A
    shard whose record exists with the same fingerprint is reused, not re-read: a job that is
    interrupted and rerun loses at most the shards it was writing.

    The job's part of the split index goes to ``out_dir/parts/<part_name>.parquet`` (columns
    ``id, split, shard, row``), its rejects to ``.rejected.csv`` (``id, image_path, reason``) and
    its counts and settings to ``.json``; :func:`merge_token_groups` joins the parts.

    Args:
        metadata: The whole split's catalogue: columns ``id`` and ``image_path`` (relative to
            ``image_root``, or absolute), optionally ``image_row`` (row of an encoded image in
            the parquet shard ``image_path``; the HuggingFace source). Every job gets the same
            table. A repeated id is rejected ("duplicate id ...") after its first occurrence.
        image_root: Folder the image paths are relative to.
        out_dir: The split's token folder (created).
        patch_size: Patch side in pixels.
        image_size: Required stamp side; ``None``: that of the split's first readable stamp.
        group: This job's number, ``0 <= group < groups``.
        groups: Jobs the split is tokenised by.
        shard_size: Catalogue rows per shard.
        workers: Processes decoding images; the output does not depend on it.
        log: Called with progress lines (about every 10 %) and a summary.
        max_reject_fraction: Raise if more than this fraction of the job's galaxies is rejected.
        chunk_size: Galaxies per work unit of a worker process.
        n_chan, fit, nan: See :func:`tokenise_split`.
        dtype: Storage dtype; ``"auto"``: uint8 unless some path of the split is a FITS file
            (decided from the whole split's paths, so every job agrees), then float32.
        image_column: Column of encoded images in parquet shards.
        split: Name written into the index's ``split`` column.

    Returns:
        The job's summary (also its ``.json``): settings, ``shards`` (list of ``{shard, file,
        n}``), counts ``n_total``, ``n_galaxies``, ``n_rejected``, one ``n_<reason>`` per reason,
        ``n_cropped``, ``n_resized``, ``n_nan_zeroed``, and ``n_reused`` (shards kept from an
        earlier run).

    Raises:
        ValueError: On missing columns, an empty table, a bad option or group.
        RuntimeError: If more than ``max_reject_fraction`` of the job's galaxies are rejected.
    """
    image_root, out_dir = Path(image_root), Path(out_dir)
    _check_options(fit, nan, dtype, n_chan, shard_size)
    n_chan, shard_size = int(n_chan), int(shard_size)
    ids, rels, rows = _catalogue_items(metadata, str(out_dir))
    dup = _duplicates(ids)
    if dtype == "auto":  # from file names, so every job and shard agrees
        dtype = "float32" if any(is_fits(r) for r in rels) else "uint8"
    opts = ReadOptions(n_chan=n_chan, fit=fit, nan=nan, dtype=dtype, image_column=image_column)
    image_size = _resolve_reference(image_root, ids, rels, rows, opts, image_size, dup)
    if image_size % patch_size:
        raise ValueError(f"Image size ({image_size}) must be divisible by patch size ({patch_size})")
    T, D = (image_size // patch_size) ** 2, patch_size * patch_size * n_chan
    store = np.dtype(dtype)
    settings = {
        "format": SHARD_FORMAT, "patch_size": int(patch_size), "image_size": image_size,
        "n_chan": n_chan, "fit": fit, "nan": nan, "dtype": dtype, "image_column": image_column,
        "shard_size": shard_size,
    }
    K = n_shards(len(ids), shard_size)
    mine = group_shards(K, group, groups)
    shard_dir = out_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)

    def rows_of(k: int) -> range:
        return range(k * shard_size, min((k + 1) * shard_size, len(ids)))

    records: dict[int, dict] = {}
    todo: list[tuple[int, str]] = []
    for k in mine:  # temporary files of a killed earlier run of this job (only it writes these shards)
        for stale in shard_dir.glob(f"{_shard_stem(k)}.*.tmp-*"):
            stale.unlink(missing_ok=True)
    for k in mine:
        r = rows_of(k)
        fp = _fingerprint(settings, image_root, ids[r.start : r.stop], rels[r.start : r.stop], rows[r.start : r.stop])
        rec = _read_done(shard_dir, k, fp, (T, D), store)
        if rec is not None:
            records[k] = rec
        else:
            todo.append((k, fp))
    n_mine = sum(len(rows_of(k)) for k in mine)
    n_todo = sum(len(rows_of(k)) for k, _ in todo)
    label = f"{split or out_dir.name} job {part_name(group, groups)}"
    log(
        f"{label}: shards {mine.start}-{mine.stop - 1} of {K} ({n_mine} galaxies, {shard_size} per shard)"
        if len(mine) else f"{label}: no shards (the split has {K})"
    )
    if records:
        log(f"  reusing {len(records)} shard(s) finished by an earlier run; {len(todo)} to tokenise ({n_todo} galaxies)")
    if todo:
        log(
            f"  tokenising {n_todo} galaxies from {image_root} ({image_size}px, {n_chan} band(s), "
            f"{patch_size}px patches: {T} tokens x {D} {dtype} values, {workers} worker(s))"
        )

    # Work units: chunks of one shard's rows (duplicates are not read), at most ~32 MB of
    # tokens each, so 2 x workers results in flight stay small even for 512 px stamps.
    chunk_size = max(1, min(chunk_size, (32 << 20) // (T * D * store.itemsize)))
    tasks, plan = [], []
    for k, fp in todo:
        r = rows_of(k)
        for a in range(r.start, r.stop, chunk_size):
            b = min(a + chunk_size, r.stop)
            read = [i for i in range(a, b) if i not in dup]
            tasks.append((str(image_root), [(rels[i], rows[i]) for i in read], patch_size, image_size, opts))
            plan.append((k, fp, a, b, read))

    t0, done, next_log, n_rej = time.perf_counter(), 0, 0.1, 0
    current: dict[str, Any] = {}
    # Unique to this process on any node (jobs of a split share the folder, perhaps over NFS).
    tmp_suffix = f".tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def start_shard(k: int, fp: str) -> None:
        r = rows_of(k)
        (shard_dir / f"{_shard_stem(k)}.json").unlink(missing_ok=True)  # no record for a changing .npy
        npy = shard_dir / (_shard_stem(k) + ".npy" + tmp_suffix)
        current.update(k=k, fp=fp, npy=npy, ids=[], rejected=[], fixed=dict.fromkeys(_FIX_NOTES, 0),
                       mm=np.lib.format.open_memmap(npy, mode="w+", dtype=store, shape=(len(r), T, D)))

    def finish_shard() -> None:
        k, mm = current["k"], current.pop("mm")
        mm.flush()
        del mm
        n_ok = len(current["ids"])
        _shrink_npy(current["npy"], (n_ok, T, D), store)
        stem = _shard_stem(k)
        os.replace(current["npy"], shard_dir / f"{stem}.npy")
        record = {"format": SHARD_FORMAT, "fingerprint": current["fp"], "shard": k,
                  "ids": current["ids"], "rejected": current["rejected"], "fixed": current["fixed"]}
        # the record last: it marks the shard done
        atomic_write(shard_dir / f"{stem}.json", lambda p: p.write_text(json.dumps(record) + "\n"))
        records[k] = record
        current.clear()

    try:
        for (tokens, reasons, notes), (k, fp, a, b, read) in zip(_in_order(tasks, _tokenise_chunk, workers), plan):
            if not current:
                start_shard(k, fp)
            row = len(current["ids"])
            current["mm"][row : row + len(tokens)] = tokens
            outcome = dict(zip(read, zip(reasons, notes)))
            for i in range(a, b):
                reason, note = outcome.get(i, (dup.get(i, ""), ""))
                if reason:
                    path = rels[i] if rows[i] < 0 else f"{rels[i]} (row {rows[i]})"
                    current["rejected"].append([ids[i], path, reason])
                    n_rej += 1
                else:
                    current["ids"].append(ids[i])
                    for n in note.split(", ") if note else ():
                        current["fixed"][n] += 1
            if b == rows_of(k).stop:  # the shard's last chunk: write it now
                finish_shard()
            done += b - a
            if done / n_todo >= next_log or done == n_todo:
                dt = time.perf_counter() - t0
                rate = done / dt if dt > 0 else float("inf")
                log(
                    f"  {done}/{n_todo} galaxies ({100 * done / n_todo:.0f}%), {rate:.0f}/s, "
                    f"ETA {_fmt_s((n_todo - done) / rate)}, {n_rej} rejected"
                )
                while next_log <= done / n_todo:
                    next_log += 0.1
    finally:
        if "mm" in current:
            del current["mm"]
        if current:
            current["npy"].unlink(missing_ok=True)
        for stray in shard_dir.glob(f"*{tmp_suffix}"):
            stray.unlink(missing_ok=True)

    # The job's part of the index, its rejects and counts.
    index = pd.DataFrame(
        [(gid, split, k, r) for k in mine for r, gid in enumerate(records[k]["ids"])],
        columns=["id", "split", "shard", "row"],
    ).astype({"shard": np.int64, "row": np.int64})
    rejected = [tuple(x) for k in mine for x in records[k]["rejected"]]
    reasons = [r for _, _, r in rejected]
    fixed = {n: sum(records[k]["fixed"][n] for k in mine) for n in _FIX_NOTES}
    counts = {
        "n_total": n_mine,
        "n_galaxies": len(index),
        "n_rejected": len(rejected),
        **_count_reasons(reasons),
        "n_cropped": fixed["cropped"],
        "n_resized": fixed["resized"],
        "n_nan_zeroed": fixed["NaN zeroed"],
    }
    if counts["n_rejected"] > max_reject_fraction * max(n_mine, 1):
        first = "; ".join(f"{g} ({r})" for g, _, r in rejected[:5])
        raise RuntimeError(
            f"{counts['n_rejected']} of {n_mine} images under {image_root} were rejected "
            f"(more than {max_reject_fraction:.0%}); first: {first}"
        )
    summary = {
        **settings, "n_tokens": T, "token_dim": D, "order": "spiral",
        "layout": "(h p1) (w p2) c -> (h w) (p1 p2 c)", "group": group, "groups": groups,
        "n_shards": K,
        "shards": [{"shard": k, "file": f"shards/{_shard_stem(k)}.npy", "n": len(records[k]["ids"])} for k in mine],
        **counts, "n_reused": len(mine) - len(todo),
    }
    part = out_dir / "parts" / part_name(group, groups)
    part.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(part.with_suffix(".parquet"), lambda p: index.to_parquet(p, index=False))
    atomic_write(part.with_suffix(".rejected.csv"),
                 lambda p: pd.DataFrame(rejected, columns=REJECTED_COLUMNS).to_csv(p, index=False))
    atomic_write(part.with_suffix(".json"), lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    dt = time.perf_counter() - t0
    extra = [
        f"{counts[k]} {lab}"
        for k, lab in (
            ("n_duplicate", "duplicate ids"),
            ("n_wrong_bands", "with another band count"),
            ("n_nan", "with NaN pixels"),
            ("n_out_of_range", "out of the dtype's range"),
            ("n_cropped", "cropped"),
            ("n_resized", "resized"),
            ("n_nan_zeroed", "with NaN pixels zeroed"),
        )
        if counts[k]
    ]
    log(
        f"{label}: kept {counts['n_galaxies']} of {n_mine} galaxies"
        + (f" ({n_todo} tokenised in {dt:.1f}s, {n_todo / max(dt, 1e-9):.0f}/s)" if n_todo else "")
        + f"; {counts['n_unreadable']} unreadable images skipped, {counts['n_missing']} missing, "
        f"{counts['n_wrong_size']} wrong size" + "".join(f", {e}" for e in extra)
    )
    return summary


_SETTING_KEYS = ("format", "patch_size", "image_size", "n_chan", "fit", "nan", "dtype", "image_column",
                 "shard_size", "n_tokens", "token_dim", "n_shards", "order", "layout")


def merge_token_groups(out_dir: Path, groups: int, max_reject_fraction: float = 0.5, log=print) -> dict[str, Any]:
    """Join the parts written by the ``groups`` tokenise jobs of a split into its index.

    Checks that the parts agree on the settings, cover every shard exactly once, and that each
    shard file holds the rows its part lists; writes ``index.parquet`` (``id, split, shard,
    row``), ``rejected.csv`` and ``meta.json`` (settings, shard list, counts) in ``out_dir``.

    Raises:
        FileNotFoundError: If a part or shard file is missing.
        ValueError: If the parts disagree or a shard does not match its part.
        RuntimeError: If more than ``max_reject_fraction`` of the split is rejected.
    """
    out_dir = Path(out_dir)
    parts = [out_dir / "parts" / part_name(g, groups) for g in range(groups)]
    absent = [str(p.with_suffix(".json")) for p in parts if not p.with_suffix(".json").is_file()]
    if absent:
        raise FileNotFoundError(f"tokenise parts missing (run their tokenise jobs): {', '.join(absent[:5])}")
    summaries = [json.loads(p.with_suffix(".json").read_text()) for p in parts]
    ref = {k: summaries[0].get(k) for k in _SETTING_KEYS}
    for p, s in zip(parts, summaries):
        other = {k: s.get(k) for k in _SETTING_KEYS}
        if other != ref:
            diff = {k: (ref[k], other[k]) for k in _SETTING_KEYS if ref[k] != other[k]}
            raise ValueError(f"{p}.json was written with other settings than part 0: {diff}; rerun the tokenise jobs")
    shards = [s for summary in summaries for s in summary["shards"]]
    covered = [s["shard"] for s in shards]
    if covered != list(range(ref["n_shards"])):
        wrong = sorted(set(covered) ^ set(range(ref["n_shards"])))[:10]
        raise ValueError(
            f"{out_dir}: the parts cover {len(covered)} shards, expected 0..{ref['n_shards'] - 1} "
            f"once each (first differences: {wrong}); rerun the tokenise jobs"
        )
    index = pd.concat([pd.read_parquet(p.with_suffix(".parquet")) for p in parts], ignore_index=True)
    repeated = index["id"][index["id"].duplicated()]
    if len(repeated):
        raise ValueError(f"{out_dir}: galaxy ids in more than one shard, e.g. {repeated.head(5).tolist()}; rerun the tokenise jobs")
    T, D = ref["n_tokens"], ref["token_dim"]
    for s in shards:
        path = out_dir / s["file"]
        if not path.is_file():
            raise FileNotFoundError(f"token shard {path} is missing: rerun its tokenise job")
        arr = np.load(path, mmap_mode="r")
        if arr.shape != (s["n"], T, D) or arr.dtype != np.dtype(ref["dtype"]):
            raise ValueError(f"token shard {path} is {arr.shape} {arr.dtype}, its part lists ({s['n']}, {T}, {D}) {ref['dtype']}")
    rejected = pd.concat(
        [pd.read_csv(p.with_suffix(".rejected.csv"), dtype=str, keep_default_na=False) for p in parts], ignore_index=True
    )
    count_keys = [k for k in summaries[0] if k.startswith("n_") and k not in _SETTING_KEYS]
    counts = {k: int(sum(s[k] for s in summaries)) for k in count_keys}
    if counts["n_rejected"] > max_reject_fraction * counts["n_total"]:
        first = "; ".join(f"{r.id} ({r.reason})" for r in rejected.head(5).itertuples())
        raise RuntimeError(
            f"{counts['n_rejected']} of {counts['n_total']} galaxies of {out_dir} were rejected "
            f"(more than {max_reject_fraction:.0%}); first: {first}"
        )
    _remove_stale(out_dir, ref["n_shards"], groups, log)
    meta = {**ref, "shards": [{"file": s["file"], "n": s["n"]} for s in shards], "groups": groups, **counts}
    atomic_write(out_dir / "index.parquet", lambda p: index.to_parquet(p, index=False))
    atomic_write(out_dir / "rejected.csv", lambda p: rejected.to_csv(p, index=False))
    atomic_write(out_dir / "meta.json", lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
    log(
        f"{out_dir}: {counts['n_galaxies']} of {counts['n_total']} galaxies in {len(shards)} shard(s) "
        f"from {groups} job(s); {counts['n_rejected']} rejected"
        + (f" (see {out_dir / 'rejected.csv'})" if counts["n_rejected"] else "")
    )
    return meta


def _remove_stale(out_dir: Path, n_shards_: int, groups: int, log) -> None:
    """Delete shards past the split's last one and parts of another job count: left by a
    larger split or smaller ``shard_size`` before, they would only take disk space."""
    stale = [p for p in (out_dir / "shards").glob("*.*")
             if p.name.split(".")[0].isdigit() and int(p.name.split(".")[0]) >= n_shards_ and ".tmp-" not in p.name]
    stale += [p for p in (out_dir / "parts").glob("*-of-*") if not p.name.split(".")[0].endswith(f"-of-{groups:04d}")]
    if stale:
        freed = sum(p.stat().st_size for p in stale)
        for p in stale:
            p.unlink(missing_ok=True)
        log(f"{out_dir}: removed {len(stale)} stale shard/part files of an earlier layout ({freed / 1e9:.2f} GB)")


def tokenise_split(
    metadata: pd.DataFrame,
    image_root: Path,
    out_dir: Path,
    patch_size: int,
    image_size: int | None = None,
    workers: int = 1,
    log: Callable[[str], Any] = print,
    max_reject_fraction: float = 0.5,
    chunk_size: int = 256,
    n_chan: int = 3,
    fit: Literal["reject", "crop", "resize"] = "reject",
    nan: Literal["reject", "zero"] = "reject",
    dtype: Literal["auto", "uint8", "float16", "float32"] = "auto",
    shard_size: int = 2048,
    image_column: str = "image",
    split: str = "",
) -> dict[str, Any]:
    """Decode, check, patchify and spiral-order a split of stamps into token shards, in one job.

    The same as :func:`tokenise_group` with one group followed by :func:`merge_token_groups`
    (the workflow runs one tokenise job per shard group instead, in parallel).

    Reads 8-bit PNG/JPEG (PIL), FITS (astropy; any file ending ``.fits``, ``.fit``, ``.fts``,
    optionally ``.gz``) and encoded images in parquet shards (``image_row`` column). FITS: the
    first image HDU holding data; a 2-D image is one band, a 3-D cube is ``(bands, H, W)`` as
    FITS stores it (``NAXIS3`` = bands), except a cube whose last numpy axis has at most 8
    entries while its first has more, which is read as ``(H, W, bands)``. PNG/JPEG: RGB when
    ``n_chan == 3`` (any 8-bit mode is converted, as in AstroPT v1), greyscale when
    ``n_chan == 1``; 16-bit and float PNG/TIFF modes are rejected.

    Every bad galaxy is skipped and listed with its reason, never fatal (unless too many):
    missing, truncated or corrupt files of any type ("missing file", "unreadable: ..."), another
    band count ("unexpected band count: 5 (expected 3)"), NaN/inf pixels ("NaN pixels: 12"),
    another size ("wrong size: 40x40 px, expected 32x32"), values the storage dtype cannot hold
    ("values exceed float16 range ..."), a repeated id ("duplicate id ..."). Output in
    ``out_dir``, every file written under a temporary name and renamed:

    * ``shards/00000.npy`` ...: ``(n_k, T, D)`` in the storage dtype, spiral order, openable
      with ``np.load(..., mmap_mode="r")``, plus ``shards/00000.json`` records;
    * ``index.parquet``: columns ``id``, ``split``, ``shard``, ``row`` (row in that shard);
    * ``rejected.csv``: columns ``id``, ``image_path``, ``reason`` (header only when none);
    * ``meta.json``: patch_size, image_size, n_chan, n_tokens, token_dim, dtype, fit, nan,
      shard_size, shards, order, counts;
    * ``parts/0000-of-0001.*``: the job's part (see :func:`tokenise_group`).

    Args:
        metadata: Table with columns ``id`` and ``image_path`` (relative to ``image_root``, or
            absolute), optionally ``image_row``; rows are tokenised in this order.
        image_root: Folder the image paths are relative to.
        out_dir: Output folder (created).
        patch_size: Patch side in pixels.
        image_size: Required stamp side in pixels; ``None``: every image must match the first
            image that is read successfully (which must be square).
        workers: Processes to decode with; the output does not depend on it.
        log: Called with progress lines (about every 10%) and a final summary.
        max_reject_fraction: Raise if more than this fraction of galaxies is rejected.
        chunk_size: Galaxies per work unit.
        n_chan: Bands every stamp must have (``D = patch_size**2 * n_chan``).
        fit: Stamps whose size is not ``image_size``: ``"reject"`` them; ``"crop"`` the centre
            ``image_size`` square out of larger ones (smaller ones are still rejected; an odd
            margin puts the extra pixel at the bottom/right); ``"resize"`` every one (a
            non-square stamp is first centre-cropped to a square on its shorter side). Resizing
            is bilinear: PIL's filter for 8-bit images, ``torch.nn.functional.interpolate(
            mode="bilinear", antialias=True)`` for FITS data, so shrinking does not alias.
        nan: FITS stamps with NaN or infinite pixels (counted after a crop): ``"reject"`` them
            or set those pixels to ``"zero"``.
        dtype: Storage of the shards. ``"auto"``: ``uint8`` when no path of the split is a
            FITS file (decided from file names before decoding), else ``float32``. 8-bit images
            stored as float keep their 0-255 values; FITS values beyond float16's 65504 are
            rejected under ``"float16"``; under ``"uint8"`` only FITS holding integers 0-255 are
            kept.
        shard_size: Catalogue rows per shard.
        image_column: Column of encoded images in parquet shards.
        split: Name written into the index's ``split`` column.

    Returns:
        ``meta.json``'s contents: settings and counts ``n_total``, ``n_galaxies`` (kept),
        ``n_rejected``, ``n_missing``, ``n_unreadable``, ``n_wrong_size``, ``n_wrong_bands``,
        ``n_nan``, ``n_out_of_range``, ``n_duplicate`` (rejected for each reason),
        ``n_cropped``, ``n_resized``, ``n_nan_zeroed`` (kept after fixing), ``n_reused``.

    Raises:
        ValueError: On missing columns, an empty table, a size not divisible by the patch
            size or an unknown option.
        RuntimeError: If more than ``max_reject_fraction`` of the galaxies are rejected.
    """
    tokenise_group(
        metadata, image_root, out_dir, patch_size, image_size, group=0, groups=1, shard_size=shard_size,
        workers=workers, log=log, max_reject_fraction=max_reject_fraction, chunk_size=chunk_size,
        n_chan=n_chan, fit=fit, nan=nan, dtype=dtype, image_column=image_column, split=split,
    )
    return merge_token_groups(out_dir, 1, max_reject_fraction, log=log)


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


def load_tokens(split_dir: Path, max_open: int | None = None) -> TokenSplit:
    """Open a split written by :func:`tokenise_split` / :func:`merge_token_groups`.

    Every shard's header is checked against ``meta.json``; the shards are memory-mapped
    (read-only) when first read, at most ``max_open`` at a time (default: as many as the
    process's open-file limit allows, which is raised towards its hard limit if needed).

    Raises:
        FileNotFoundError: If the folder, its index, meta or a shard is missing.
        ValueError: If the index and the shards disagree.
    """
    split_dir = Path(split_dir)
    needed = [split_dir / n for n in ("index.parquet", "meta.json")]
    absent = [p.name for p in needed if not p.is_file()]
    if absent:
        raise FileNotFoundError(
            f"Tokenised split {split_dir} is missing {', '.join(absent)}; run the tokenise rule (or tokenise_split) first"
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
    tokens = ShardedTokens.open(paths, lengths, row_shape, dtype,
                                max_open=max_open or _open_file_budget(len(paths)))
    expect = np.concatenate([np.arange(n) for n in lengths]) if lengths else np.zeros(0)
    if len(index) != len(tokens):
        raise ValueError(f"{split_dir}: index.parquet lists {len(index)} galaxies but the shards hold {len(tokens)}")
    if not np.array_equal(index["row"].to_numpy(), expect):
        raise ValueError(f"{split_dir}: index.parquet's rows do not follow the shards' order; rerun token_index")
    return TokenSplit(tokens=tokens, ids=np.asarray(index["id"].astype(str).tolist(), dtype=str), meta=meta)
