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
  whole image instead, which separates model sizes better on clean synthetic stamps (see
  ``docs/default-sizing.md``).

It also turns a split of PNG/JPEG stamps into one memory-mappable ``uint8`` token array on
disk (:func:`tokenise_split`), so training reads tokens without decoding images, and reads it
back (:func:`load_tokens`). Normalisation happens at training time, on the training device.

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pandas as pd
import torch

ArrayLike = np.ndarray | torch.Tensor

__all__ = [
    "spiral_order",
    "patchify",
    "unpatchify",
    "image_to_tokens",
    "tokens_to_image",
    "normalise",
    "tokenise_split",
    "load_tokens",
    "TokenSplit",
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
        float32 tensor of the same shape. Std is torch's default (unbiased), as in v1.

    Raises:
        ValueError: On an unknown mode or fewer than two dimensions.
    """
    if x.ndim < 2:
        raise ValueError(f"normalise expects tokens (..., T, D), got shape {tuple(x.shape)}")
    x = x.to(torch.float32)
    if mode == "patch":
        dims: tuple[int, ...] = (-1,)
    elif mode == "image":
        dims = (-2, -1)
    else:
        raise ValueError(f"normalise mode must be 'patch' or 'image', got {mode!r}")
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True)
    return (x - mean) / (std + eps)


# ---------------------------------------------------------------------------------------------
# Tokenising a split of images to disk
# ---------------------------------------------------------------------------------------------
@dataclass
class TokenSplit:
    """A tokenised split read back from disk.

    Attributes:
        tokens: Memory-mapped ``uint8`` array ``(N, T, D)``, spiral order.
        ids: Galaxy ids (str), one per row of ``tokens``.
        meta: Contents of ``meta.json`` (patch_size, image_size, n_tokens, ...).
    """

    tokens: np.memmap = field(repr=False)
    ids: np.ndarray = field(repr=False)
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.ids)


def _decode(path: Path) -> np.ndarray:
    """Fully decode an image file to an (H, W, 3) uint8 RGB array."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # forces the full decode: truncated files raise here
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _read_one(path: Path, image_size: int | None) -> tuple[np.ndarray | None, str]:
    """Return (image, "") or (None, reason) for one file."""
    if not path.is_file():
        return None, "missing file"
    try:
        img = _decode(path)
    except Exception as exc:  # PIL raises many types on corrupt data (OSError, SyntaxError, ...)
        return None, f"unreadable: {type(exc).__name__}: {exc}".replace("\n", " ")
    if image_size is not None and img.shape[:2] != (image_size, image_size):
        H, W = img.shape[:2]
        return None, f"wrong size: {W}x{H} px, expected {image_size}x{image_size}"
    return img, ""


def _tokenise_chunk(
    image_root: str, items: list[tuple[str, str]], patch_size: int, image_size: int
) -> tuple[np.ndarray, list[int], list[str]]:
    """Worker: tokenise a chunk; returns (tokens of the good ones, good positions, reasons)."""
    root = Path(image_root)
    good, pos, reasons = [], [], []
    for k, (_, rel) in enumerate(items):
        img, reason = _read_one(root / rel, image_size)
        reasons.append(reason)
        if img is not None:
            good.append(image_to_tokens(img, patch_size))
            pos.append(k)
    if good:
        tokens = np.stack(good)
    else:
        T = (image_size // patch_size) ** 2
        tokens = np.zeros((0, T, patch_size * patch_size * 3), np.uint8)
    return tokens, pos, reasons


def _fmt_s(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


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
) -> dict[str, int]:
    """Decode, check, patchify and spiral-order a split of RGB stamps into one token file.

    Unreadable, truncated, missing or wrongly sized images are skipped and listed, never fatal
    (unless too many). Output in ``out_dir`` (written under temporary names and renamed at the
    end, so an interrupted run leaves no half-written file under a final name):

    * ``tokens.npy``: ``uint8 (N_ok, T, D)``, spiral order, openable with
      ``np.load(..., mmap_mode="r")``; filled incrementally through a memory map;
    * ``index.parquet``: columns ``id``, ``row`` (row of ``tokens.npy``);
    * ``rejected.csv``: columns ``id``, ``image_path``, ``reason`` (header only when none);
    * ``meta.json``: patch_size, image_size, n_chan, n_tokens, token_dim, order, counts.

    Args:
        metadata: Table with columns ``id`` (str, unique) and ``image_path`` (relative to
            ``image_root``); rows are tokenised in this order.
        image_root: Folder the image paths are relative to.
        out_dir: Output folder (created).
        patch_size: Patch side in pixels.
        image_size: Required stamp side in pixels; ``None``: every image must match the first
            image that decodes.
        workers: Processes to decode with; the output does not depend on it.
        log: Called with progress lines (about every 10%) and a final summary.
        max_reject_fraction: Raise if more than this fraction of galaxies is rejected.
        chunk_size: Galaxies per work unit.

    Returns:
        Counts: ``n_total``, ``n_galaxies`` (kept), ``n_rejected``, ``n_missing``,
        ``n_unreadable``, ``n_wrong_size``.

    Raises:
        ValueError: On missing columns, duplicate ids, an empty table or a size not divisible by
            the patch size.
        RuntimeError: If more than ``max_reject_fraction`` of the galaxies are rejected.
    """
    image_root, out_dir = Path(image_root), Path(out_dir)
    missing_cols = {"id", "image_path"} - set(metadata.columns)
    if missing_cols:
        raise ValueError(f"metadata lacks column(s) {sorted(missing_cols)}; needs id, image_path")
    ids = metadata["id"].astype(str).tolist()
    rels = metadata["image_path"].astype(str).tolist()
    n_total = len(ids)
    if n_total == 0:
        raise ValueError(f"metadata for {out_dir} is empty: no galaxies to tokenise")
    dup = pd.Index(ids)[pd.Index(ids).duplicated()]
    if len(dup):
        raise ValueError(f"metadata has duplicate galaxy ids, e.g. {list(dup[:5])}")

    # Reference size: the first image that decodes (decoded here, before any worker starts).
    if image_size is None:
        for rel in rels:
            img, _ = _read_one(image_root / rel, None)
            if img is not None:
                if img.shape[0] != img.shape[1]:
                    raise ValueError(
                        f"{image_root / rel}: stamps must be square, got {img.shape[1]}x{img.shape[0]}"
                    )
                image_size = int(img.shape[0])
                break
        else:
            raise RuntimeError(
                f"None of the {n_total} images under {image_root} could be read, "
                f"e.g. {ids[0]} ({image_root / rels[0]})"
            )
    if image_size % patch_size:
        raise ValueError(f"Image size ({image_size}) must be divisible by patch size ({patch_size})")
    n_chan = 3
    T = (image_size // patch_size) ** 2
    D = patch_size * patch_size * n_chan

    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f".tmp-{os.getpid()}"
    final = {k: out_dir / k for k in ("tokens.npy", "index.parquet", "rejected.csv", "meta.json")}
    tmp = {k: p.with_name(p.name + suffix) for k, p in final.items()}

    items = list(zip(ids, rels))
    chunks = [items[i : i + chunk_size] for i in range(0, n_total, chunk_size)]
    log(
        f"tokenising {n_total} galaxies from {image_root} -> {out_dir} "
        f"({image_size}px, {patch_size}px patches: {T} tokens x {D} values, {workers} worker(s))"
    )

    t0 = time.perf_counter()
    try:
        # Allocated for every galaxy; shrunk to the kept rows at the end.
        mm = np.lib.format.open_memmap(tmp["tokens.npy"], mode="w+", dtype=np.uint8, shape=(n_total, T, D))
        kept_ids: list[str] = []
        rejected: list[tuple[str, str, str]] = []
        next_log, done = 0.1, 0

        def consume(start: int, result: tuple[np.ndarray, list[int], list[str]]) -> None:
            nonlocal next_log, done
            tokens, pos, reasons = result
            row = len(kept_ids)
            mm[row : row + len(pos)] = tokens
            for k, reason in enumerate(reasons):
                gid, rel = items[start + k]
                if reason:
                    rejected.append((gid, rel, reason))
                else:
                    kept_ids.append(gid)
            done += len(reasons)
            if done / n_total >= next_log or done == n_total:
                dt = time.perf_counter() - t0
                rate = done / dt if dt > 0 else float("inf")
                log(
                    f"  {done}/{n_total} galaxies ({100 * done / n_total:.0f}%), "
                    f"{rate:.0f}/s, ETA {_fmt_s((n_total - done) / rate)}, {len(rejected)} rejected"
                )
                while next_log <= done / n_total:
                    next_log += 0.1

        args = (str(image_root),)
        if workers <= 1:
            for i, chunk in enumerate(chunks):
                consume(i * chunk_size, _tokenise_chunk(*args, chunk, patch_size, image_size))
        else:
            with cf.ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [
                    pool.submit(_tokenise_chunk, *args, chunk, patch_size, image_size)
                    for chunk in chunks
                ]
                for i, fut in enumerate(futures):  # in order: rows do not depend on workers
                    consume(i * chunk_size, fut.result())
                    futures[i] = None  # type: ignore[call-overload]  # free the chunk

        n_ok, n_rej = len(kept_ids), len(rejected)
        if n_rej > max_reject_fraction * n_total:
            first = "; ".join(f"{g} ({r})" for g, _, r in rejected[:5])
            raise RuntimeError(
                f"{n_rej} of {n_total} images under {image_root} were rejected "
                f"(more than {max_reject_fraction:.0%}); first: {first}"
            )
        mm.flush()
        del mm
        _shrink_npy(tmp["tokens.npy"], (n_ok, T, D), np.uint8)

        pd.DataFrame({"id": kept_ids, "row": np.arange(n_ok, dtype=np.int64)}).to_parquet(
            tmp["index.parquet"], index=False
        )
        pd.DataFrame(rejected, columns=["id", "image_path", "reason"]).to_csv(
            tmp["rejected.csv"], index=False
        )
        reasons = [r for _, _, r in rejected]
        counts = {
            "n_total": n_total,
            "n_galaxies": n_ok,
            "n_rejected": n_rej,
            "n_missing": sum(r == "missing file" for r in reasons),
            "n_unreadable": sum(r.startswith("unreadable") for r in reasons),
            "n_wrong_size": sum(r.startswith("wrong size") for r in reasons),
        }
        meta = {
            "patch_size": int(patch_size),
            "image_size": int(image_size),
            "n_chan": n_chan,
            "n_tokens": T,
            "token_dim": D,
            "order": "spiral",
            "layout": "(h p1) (w p2) c -> (h w) (p1 p2 c)",
            **counts,
        }
        tmp["meta.json"].write_text(json.dumps(meta, indent=2) + "\n")
        for key in ("tokens.npy", "index.parquet", "rejected.csv", "meta.json"):  # meta last
            os.replace(tmp[key], final[key])
    finally:
        for p in tmp.values():
            p.unlink(missing_ok=True)

    dt = time.perf_counter() - t0
    log(
        f"tokenised {n_ok} of {n_total} galaxies in {dt:.1f}s ({n_total / max(dt, 1e-9):.0f}/s); "
        f"{counts['n_unreadable']} unreadable images skipped, {counts['n_missing']} missing, "
        f"{counts['n_wrong_size']} wrong size"
        + (f" (see {final['rejected.csv']})" if n_rej else "")
    )
    return counts


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
    src = np.load(path, mmap_mode="r")
    fresh = path.with_name(path.name + ".shrink")
    out = fmt.open_memmap(fresh, mode="w+", dtype=dtype, shape=shape)
    for i in range(0, shape[0], 1024):
        j = min(i + 1024, shape[0])
        out[i:j] = src[i:j]
    out.flush()
    del out, src
    os.replace(fresh, path)


def load_tokens(split_dir: Path) -> TokenSplit:
    """Open a split written by :func:`tokenise_split` (tokens memory-mapped, read-only).

    Args:
        split_dir: Folder holding ``tokens.npy``, ``index.parquet`` and ``meta.json``.

    Returns:
        The :class:`TokenSplit`.

    Raises:
        FileNotFoundError: If the folder or one of its files is missing.
        ValueError: If the index and the token array disagree.
    """
    split_dir = Path(split_dir)
    needed = [split_dir / n for n in ("tokens.npy", "index.parquet", "meta.json")]
    absent = [p.name for p in needed if not p.is_file()]
    if absent:
        raise FileNotFoundError(
            f"Tokenised split {split_dir} is missing {', '.join(absent)}; run tokenise_split first"
        )
    tokens = np.load(needed[0], mmap_mode="r")
    index = pd.read_parquet(needed[1]).sort_values("row")
    meta = json.loads(needed[2].read_text())
    if len(index) != len(tokens) or not np.array_equal(index["row"].to_numpy(), np.arange(len(tokens))):
        raise ValueError(
            f"{split_dir}: index.parquet lists {len(index)} rows but tokens.npy has {len(tokens)}"
        )
    return TokenSplit(tokens=tokens, ids=np.asarray(index["id"].astype(str).tolist(), dtype=str), meta=meta)
