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

It also turns a split of PNG/JPEG or FITS stamps into one memory-mappable token array on disk
(:func:`tokenise_split`; ``uint8`` for 8-bit images, ``float16``/``float32`` for FITS), so training
reads tokens without decoding images, and reads it back (:func:`load_tokens`). Bad stamps (corrupt,
truncated, another size or band count, NaN pixels) are skipped, cropped, resized or zeroed as asked
and listed with their reason. Normalisation happens at training time, on the training device.

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
        tokens: Memory-mapped array ``(N, T, D)``, spiral order, in the stored dtype
            (``meta["dtype"]``: uint8, float16 or float32; splits written before FITS support
            are uint8 and have no ``dtype`` key).
        ids: Galaxy ids (str), one per row of ``tokens``.
        meta: Contents of ``meta.json`` (patch_size, image_size, n_chan, n_tokens, dtype, ...).
    """

    tokens: np.memmap = field(repr=False)
    ids: np.ndarray = field(repr=False)
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.ids)


FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
"""File endings (lower case) read as FITS through astropy; anything else goes to PIL."""

_FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
_MAX_CUBE_BANDS = 8  # a 3-D FITS cube whose last axis is <= this (and first is not) is (H, W, bands)


def is_fits(path: str | Path) -> bool:
    """Whether ``path`` names a FITS file (``.fits``, ``.fit``, ``.fts``, optionally ``.gz``)."""
    return str(path).lower().endswith(FITS_SUFFIXES)


@dataclass(frozen=True)
class _ReadOptions:
    """How a worker turns a file into an image: see :func:`tokenise_split`'s arguments."""

    n_chan: int = 3
    fit: str = "reject"
    nan: str = "reject"
    dtype: str = "uint8"  # storage dtype of the tokens


class _Reject(Exception):
    """Raised while reading one galaxy; its message is the reason written to rejected.csv."""


def _decode_pil(path: Path, n_chan: int) -> np.ndarray:
    """Fully decode a PNG/JPEG (or any PIL format) to an (H, W, n_chan) uint8 array.

    Every 8-bit image is converted to RGB when ``n_chan == 3`` (greyscale, palette, RGBA and
    CMYK included, as AstroPT v1 did); greyscale ("L", "LA", "1") gives one band when
    ``n_chan == 1``. Other combinations, and 16-bit or float images (which RGB conversion would
    clip), are rejected.
    """
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # forces the full decode: truncated files raise here
        mode = im.mode
        if mode in ("I", "F") or mode.startswith("I;"):
            raise _Reject(
                f"unsupported pixel format: PIL mode {mode} is not 8-bit; "
                "store such stamps as FITS or 8-bit PNG"
            )
        if n_chan == 3:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
        if n_chan == 1 and mode in ("L", "LA", "1"):
            return np.asarray(im.convert("L"), dtype=np.uint8)[..., None]
        bands = {"L": 1, "1": 1, "LA": 2, "P": 3, "PA": 4}.get(mode, len(im.getbands()))
        raise _Reject(f"unexpected band count: {bands} (expected {n_chan})")


def _decode_fits(path: Path) -> np.ndarray:
    """Read the first image HDU with data of a FITS file as an (H, W, bands) float32 array.

    Layout rule: a 2-D image is one band; a 3-D cube is ``(bands, H, W)`` in numpy order
    (``NAXIS3`` = bands, as FITS cubes are usually written), except that a cube whose last numpy
    axis has at most 8 entries while its first has more is taken as ``(H, W, bands)``. Leading
    length-1 axes of 4-D and higher data are dropped. BSCALE/BZERO/BLANK are applied by astropy.
    """
    import warnings

    from astropy.io import fits

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fits.open(path, memmap=False) as hdul:
                data = None
                for hdu in hdul:
                    if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
                        if hdu.data is not None and hdu.data.size:
                            data = np.asarray(hdu.data, dtype=np.float32)  # native byte order
                            break
        except Exception as exc:
            hint = [str(w.message) for w in caught if "truncated" in str(w.message)]
            raise _Reject(
                f"unreadable: {type(exc).__name__}: {hint[0] if hint else exc}".replace("\n", " ")
            ) from None
    if data is None:
        raise _Reject("unreadable: no image data in any HDU")
    while data.ndim > 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim == 2:
        return data[..., None]
    if data.ndim == 3:
        if data.shape[2] <= _MAX_CUBE_BANDS < data.shape[0]:
            return data  # already (H, W, bands)
        return np.ascontiguousarray(data.transpose(1, 2, 0))  # (bands, H, W) -> (H, W, bands)
    raise _Reject(f"unsupported FITS data shape {data.shape}: expected 2-D or a 3-D cube")


def _centre_crop(img: np.ndarray, h: int, w: int) -> np.ndarray:
    H, W = img.shape[:2]
    top, left = (H - h) // 2, (W - w) // 2
    return img[top : top + h, left : left + w]


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, C) image to (size, size, C); non-square ones are centre-cropped square first.

    8-bit images go through PIL's bilinear filter; float images through torch's bilinear
    interpolation with ``antialias=True`` (the same triangle filter, widened when shrinking, so
    both kinds are resampled alike and downsampling does not alias).
    """
    side = min(img.shape[:2])
    img = _centre_crop(img, side, side)
    if img.dtype == np.uint8:
        from PIL import Image

        im = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
        out = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
        return out.reshape(size, size, img.shape[2])
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]  # (1, C, H, W)
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return t[0].permute(1, 2, 0).contiguous().numpy()


def _load(path: Path, image_size: int | None, opts: _ReadOptions) -> tuple[np.ndarray, str]:
    """Read one stamp and make it fit: ``(image (S, S, n_chan) in opts.dtype, note)``.

    ``note`` is "" or what was done to keep it ("cropped", "resized", "NaN zeroed", joined by
    ", "). Raises :class:`_Reject` with the reason otherwise.
    """
    if not path.is_file():
        raise _Reject("missing file")
    if is_fits(path.name):
        img = _decode_fits(path)
    else:
        try:
            img = _decode_pil(path, opts.n_chan)
        except _Reject:
            raise
        except Exception as exc:  # PIL raises many types on corrupt data (OSError, SyntaxError, ...)
            raise _Reject(f"unreadable: {type(exc).__name__}: {exc}".replace("\n", " ")) from None
    if img.shape[2] != opts.n_chan:
        raise _Reject(f"unexpected band count: {img.shape[2]} (expected {opts.n_chan})")
    notes = []
    H, W = img.shape[:2]
    S = image_size
    if S is not None and (H, W) != (S, S) and opts.fit == "crop" and H >= S and W >= S:
        img = _centre_crop(img, S, S)
        notes.append("cropped")
    if img.dtype != np.uint8:
        bad = ~np.isfinite(img)
        n_bad = int(bad.sum())
        if n_bad:
            if opts.nan != "zero":
                n_nan = int(np.isnan(img).sum())
                inf = f", infinite pixels: {n_bad - n_nan}" if n_bad > n_nan else ""
                raise _Reject(f"NaN pixels: {n_nan}{inf}")
            img = np.where(bad, np.float32(0), img)
            notes.append("NaN zeroed")
    if S is not None and img.shape[:2] != (S, S):
        if opts.fit != "resize":
            small = " (smaller than the crop)" if opts.fit == "crop" else ""
            raise _Reject(f"wrong size: {W}x{H} px, expected {S}x{S}{small}")
        img = _resize(img, S)
        notes.append("resized")
    if opts.dtype == "uint8":
        if img.dtype != np.uint8:  # FITS data stored as uint8: only exact 0..255 integers
            if img.min() < 0 or img.max() > 255 or not np.array_equal(img, np.round(img)):
                raise _Reject(
                    f"values do not fit uint8 (range {img.min():.4g} to {img.max():.4g}, "
                    "integers 0-255 needed): store as float16 or float32"
                )
            img = img.astype(np.uint8)
    elif img.dtype == np.uint8:
        img = img.astype(opts.dtype)  # 0..255 kept exactly
    else:
        if opts.dtype == "float16":
            peak = float(np.abs(img).max())
            if peak > _FLOAT16_MAX:
                raise _Reject(f"values exceed float16 range (max |x| = {peak:.4g} > 65504): store as float32")
        img = img.astype(opts.dtype, copy=False)
    return img, ", ".join(notes)


def _read_one(
    path: Path, image_size: int | None, opts: _ReadOptions = _ReadOptions()
) -> tuple[np.ndarray | None, str, str]:
    """Return ``(image, "", note)`` or ``(None, reason, "")`` for one file."""
    try:
        img, note = _load(path, image_size, opts)
    except _Reject as rej:
        return None, str(rej), ""
    except Exception as exc:  # anything else a broken file can trigger stays a rejection
        return None, f"unreadable: {type(exc).__name__}: {exc}".replace("\n", " "), ""
    return img, "", note


def _tokenise_chunk(
    image_root: str,
    items: list[tuple[str, str]],
    patch_size: int,
    image_size: int,
    opts: _ReadOptions = _ReadOptions(),
) -> tuple[np.ndarray, list[int], list[str], list[str]]:
    """Worker: tokenise a chunk; returns (tokens of the good ones, good positions, reasons, notes)."""
    root = Path(image_root)
    good, pos, reasons, notes = [], [], [], []
    for k, (_, rel) in enumerate(items):
        img, reason, note = _read_one(root / rel, image_size, opts)
        reasons.append(reason)
        notes.append(note)
        if img is not None:
            good.append(image_to_tokens(img, patch_size))
            pos.append(k)
    if good:
        tokens = np.stack(good)
    else:
        T = (image_size // patch_size) ** 2
        tokens = np.zeros((0, T, patch_size * patch_size * opts.n_chan), np.dtype(opts.dtype))
    return tokens, pos, reasons, notes


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
    n_chan: int = 3,
    fit: Literal["reject", "crop", "resize"] = "reject",
    nan: Literal["reject", "zero"] = "reject",
    dtype: Literal["auto", "uint8", "float16", "float32"] = "auto",
) -> dict[str, int]:
    """Decode, check, patchify and spiral-order a split of stamps into one token file.

    Reads 8-bit PNG/JPEG (PIL) and FITS (astropy; any file ending ``.fits``, ``.fit``,
    ``.fts``, optionally ``.gz``). FITS: the first image HDU holding data; a 2-D image is one
    band, a 3-D cube is ``(bands, H, W)`` as FITS stores it (``NAXIS3`` = bands), except a cube
    whose last numpy axis has at most 8 entries while its first has more, which is read as
    ``(H, W, bands)``. PNG/JPEG: RGB when ``n_chan == 3`` (any 8-bit mode is converted, as in
    AstroPT v1), greyscale when ``n_chan == 1``; 16-bit and float PNG/TIFF modes are rejected.

    Every bad galaxy is skipped and listed with its reason, never fatal (unless too many):
    missing, truncated or corrupt files of any type ("missing file", "unreadable: ..."), another
    band count ("unexpected band count: 5 (expected 3)"), NaN/inf pixels ("NaN pixels: 12"),
    another size ("wrong size: 40x40 px, expected 32x32"), values the storage dtype cannot hold
    ("values exceed float16 range ..."). Output in ``out_dir`` (written under temporary names
    and renamed at the end, so an interrupted run leaves no half-written file under a final
    name):

    * ``tokens.npy``: ``(N_ok, T, D)`` in the storage dtype, spiral order, openable with
      ``np.load(..., mmap_mode="r")``; filled incrementally through a memory map;
    * ``index.parquet``: columns ``id``, ``row`` (row of ``tokens.npy``);
    * ``rejected.csv``: columns ``id``, ``image_path``, ``reason`` (header only when none);
    * ``meta.json``: patch_size, image_size, n_chan, n_tokens, token_dim, dtype, fit, nan,
      order, counts.

    Args:
        metadata: Table with columns ``id`` (str, unique) and ``image_path`` (relative to
            ``image_root``, or absolute); rows are tokenised in this order.
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
        dtype: Storage of ``tokens.npy``. ``"auto"``: ``uint8`` when no path of the split is a
            FITS file (decided from file names before decoding), else ``float32``. 8-bit images
            stored as float keep their 0-255 values; FITS values beyond float16's 65504 are
            rejected under ``"float16"``; under ``"uint8"`` only FITS holding integers 0-255 are
            kept.

    Returns:
        Counts: ``n_total``, ``n_galaxies`` (kept), ``n_rejected``, ``n_missing``,
        ``n_unreadable``, ``n_wrong_size``, ``n_wrong_bands``, ``n_nan``, ``n_out_of_range``
        (rejected for each reason), ``n_cropped``, ``n_resized``, ``n_nan_zeroed`` (kept after
        fixing).

    Raises:
        ValueError: On missing columns, duplicate ids, an empty table, a size not divisible by
            the patch size or an unknown option.
        RuntimeError: If more than ``max_reject_fraction`` of the galaxies are rejected.
    """
    image_root, out_dir = Path(image_root), Path(out_dir)
    for name, value, allowed in (
        ("fit", fit, ("reject", "crop", "resize")),
        ("nan", nan, ("reject", "zero")),
        ("dtype", dtype, ("auto", "uint8", "float16", "float32")),
    ):
        if value not in allowed:
            raise ValueError(f"tokenise_split: {name} must be one of {list(allowed)}, got {value!r}")
    if int(n_chan) != n_chan or n_chan < 1:
        raise ValueError(f"tokenise_split: n_chan must be a positive integer, got {n_chan!r}")
    n_chan = int(n_chan)
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
    if dtype == "auto":  # from file names, so the token array is allocated once
        dtype = "float32" if any(is_fits(r) for r in rels) else "uint8"
    store = np.dtype(dtype)
    opts = _ReadOptions(n_chan=n_chan, fit=fit, nan=nan, dtype=dtype)

    # Reference size: the first image that reads (read here, before any worker starts).
    if image_size is None:
        first_reason = ""
        for rel in rels:
            img, reason, _ = _read_one(image_root / rel, None, opts)
            first_reason = first_reason or reason
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
                f"e.g. {ids[0]} ({image_root / rels[0]}): {first_reason}"
            )
    if image_size % patch_size:
        raise ValueError(f"Image size ({image_size}) must be divisible by patch size ({patch_size})")
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
        f"({image_size}px, {n_chan} band(s), {patch_size}px patches: {T} tokens x {D} {dtype} values, "
        f"{workers} worker(s))"
    )

    t0 = time.perf_counter()
    try:
        # Allocated for every galaxy; shrunk to the kept rows at the end.
        mm = np.lib.format.open_memmap(tmp["tokens.npy"], mode="w+", dtype=store, shape=(n_total, T, D))
        kept_ids: list[str] = []
        rejected: list[tuple[str, str, str]] = []
        fixed = {"cropped": 0, "resized": 0, "NaN zeroed": 0}
        next_log, done = 0.1, 0

        def consume(start: int, result: tuple[np.ndarray, list[int], list[str], list[str]]) -> None:
            nonlocal next_log, done
            tokens, pos, reasons, notes = result
            row = len(kept_ids)
            mm[row : row + len(pos)] = tokens
            for k, reason in enumerate(reasons):
                gid, rel = items[start + k]
                if reason:
                    rejected.append((gid, rel, reason))
                else:
                    kept_ids.append(gid)
                    for note in notes[k].split(", ") if notes[k] else ():
                        fixed[note] += 1
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
                consume(i * chunk_size, _tokenise_chunk(*args, chunk, patch_size, image_size, opts))
        else:
            with cf.ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [
                    pool.submit(_tokenise_chunk, *args, chunk, patch_size, image_size, opts)
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
        _shrink_npy(tmp["tokens.npy"], (n_ok, T, D), store)

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
            "n_unreadable": sum(r.startswith(("unreadable", "unsupported")) for r in reasons),
            "n_wrong_size": sum(r.startswith("wrong size") for r in reasons),
            "n_wrong_bands": sum(r.startswith("unexpected band count") for r in reasons),
            "n_nan": sum(r.startswith("NaN pixels") for r in reasons),
            "n_out_of_range": sum(r.startswith("values") for r in reasons),
            "n_cropped": fixed["cropped"],
            "n_resized": fixed["resized"],
            "n_nan_zeroed": fixed["NaN zeroed"],
        }
        meta = {
            "patch_size": int(patch_size),
            "image_size": int(image_size),
            "n_chan": n_chan,
            "n_tokens": T,
            "token_dim": D,
            "dtype": dtype,
            "fit": fit,
            "nan": nan,
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
    extra = [
        f"{counts[k]} {label}"
        for k, label in (
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
        f"tokenised {n_ok} of {n_total} galaxies in {dt:.1f}s ({n_total / max(dt, 1e-9):.0f}/s); "
        f"{counts['n_unreadable']} unreadable images skipped, {counts['n_missing']} missing, "
        f"{counts['n_wrong_size']} wrong size"
        + "".join(f", {e}" for e in extra)
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
