"""Reading galaxy stamps: PNG/JPEG (PIL) and FITS (astropy) files, or encoded images stored
in parquet shards (the HuggingFace source), checked and made to fit one stamp size.

Every problem with one galaxy is a :class:`Reject` whose message is the reason listed in
``rejected.csv``: a missing file, a truncated or corrupt one, another band count, NaN pixels,
another size (unless the config crops or resizes), values the storage dtype cannot hold.
:func:`read_stamp` never raises for a bad galaxy; it returns the reason instead.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["FITS_SUFFIXES", "is_fits", "ReadOptions", "Reject", "read_stamp", "read_stamps"]

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
"""File endings (lower case) read as FITS through astropy; anything else goes to PIL."""

_FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
_MAX_CUBE_BANDS = 8  # a 3-D FITS cube whose last axis is <= this (and first is not) is (H, W, bands)


def is_fits(path: str | Path) -> bool:
    """Whether ``path`` names a FITS file (``.fits``, ``.fit``, ``.fts``, optionally ``.gz``)."""
    return str(path).lower().endswith(FITS_SUFFIXES)


@dataclass(frozen=True)
class ReadOptions:
    """How a stamp is read and made to fit (see :class:`astropt.tokenise.TokeniseSettings`).

    Attributes:
        n_chan: Bands every stamp must have.
        fit: ``"reject"``, ``"crop"`` or ``"resize"`` stamps of another size.
        nan: ``"reject"`` FITS stamps with NaN/inf pixels or set them to ``"zero"``.
        dtype: Storage dtype of the tokens (uint8, float16, float32).
        image_column: Column of encoded images in parquet shards (the HuggingFace source).
    """

    n_chan: int = 3
    fit: str = "reject"
    nan: str = "reject"
    dtype: str = "uint8"
    image_column: str = "image"


class Reject(Exception):
    """Raised while reading one galaxy; its message is the reason written to rejected.csv."""


def _decode_pil(path: Path | io.BytesIO, n_chan: int) -> np.ndarray:
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
            raise Reject(
                f"unsupported pixel format: PIL mode {mode} is not 8-bit; "
                "store such stamps as FITS or 8-bit PNG"
            )
        if n_chan == 3:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
        if n_chan == 1 and mode in ("L", "LA", "1"):
            return np.asarray(im.convert("L"), dtype=np.uint8)[..., None]
        bands = {"L": 1, "1": 1, "LA": 2, "P": 3, "PA": 4}.get(mode, len(im.getbands()))
        raise Reject(f"unexpected band count: {bands} (expected {n_chan})")


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
            raise Reject(
                f"unreadable: {type(exc).__name__}: {hint[0] if hint else exc}".replace("\n", " ")
            ) from None
    if data is None:
        raise Reject("unreadable: no image data in any HDU")
    while data.ndim > 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim == 2:
        return data[..., None]
    if data.ndim == 3:
        if data.shape[2] <= _MAX_CUBE_BANDS < data.shape[0]:
            return data  # already (H, W, bands)
        return np.ascontiguousarray(data.transpose(1, 2, 0))  # (bands, H, W) -> (H, W, bands)
    raise Reject(f"unsupported FITS data shape {data.shape}: expected 2-D or a 3-D cube")


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
    import torch  # here, not at the top: the download stage imports this module without needing it

    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]  # (1, C, H, W)
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return t[0].permute(1, 2, 0).contiguous().numpy()


def _load(source: Path | bytes, image_size: int | None, opts: ReadOptions) -> tuple[np.ndarray, str]:
    """Read one stamp and make it fit: ``(image (S, S, n_chan) in opts.dtype, note)``.

    ``source`` is a file, or the encoded bytes of a PNG/JPEG stored in a parquet shard.
    ``note`` is "" or what was done to keep it ("cropped", "resized", "NaN zeroed", joined by
    ", "). Raises :class:`Reject` with the reason otherwise, or what PIL raises on a corrupt
    image (:func:`read_stamp` lists that as "unreadable: <type>: <message>").
    """
    if isinstance(source, Path) and not source.is_file():
        raise Reject("missing file")
    if isinstance(source, Path) and is_fits(source.name):
        img = _decode_fits(source)
    else:  # PIL raises many types on corrupt data (OSError, SyntaxError, ...): read_stamp's "unreadable"
        img = _decode_pil(io.BytesIO(source) if isinstance(source, bytes) else source, opts.n_chan)
    if img.shape[2] != opts.n_chan:
        raise Reject(f"unexpected band count: {img.shape[2]} (expected {opts.n_chan})")
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
                raise Reject(f"NaN pixels: {n_nan}{inf}")
            img = np.where(bad, np.float32(0), img)
            notes.append("NaN zeroed")
    if S is not None and img.shape[:2] != (S, S):
        if opts.fit != "resize":
            small = " (smaller than the crop)" if opts.fit == "crop" else ""
            raise Reject(f"wrong size: {W}x{H} px, expected {S}x{S}{small}")
        img = _resize(img, S)
        notes.append("resized")
    if opts.dtype == "uint8" and img.dtype != np.uint8:  # FITS data as uint8: only exact 0..255 integers
        if img.min() < 0 or img.max() > 255 or not np.array_equal(img, np.round(img)):
            raise Reject(
                f"values do not fit uint8 (range {img.min():.4g} to {img.max():.4g}, "
                "integers 0-255 needed): store as float16 or float32"
            )
    if opts.dtype == "float16" and img.dtype != np.uint8 and (peak := float(np.abs(img).max())) > _FLOAT16_MAX:
        raise Reject(f"values exceed float16 range (max |x| = {peak:.4g} > 65504): store as float32")
    return img.astype(opts.dtype, copy=False), ", ".join(notes)  # 8-bit values 0..255 kept exactly


def read_stamp(
    source: Path | bytes | None, image_size: int | None, opts: ReadOptions = ReadOptions()
) -> tuple[np.ndarray | None, str, str]:
    """Read one stamp; never raises for a bad one.

    Args:
        source: A PNG/JPEG/FITS file, the encoded bytes of an image, or ``None`` (no image).
        image_size: Required side in pixels (``None``: any size).
        opts: Bands, fitting, NaN handling and storage dtype.

    Returns:
        ``(image, "", note)`` with ``image`` ``(S, S, n_chan)`` in ``opts.dtype`` and ``note``
        what was done to keep it ("" if nothing), or ``(None, reason, "")``.
    """
    if source is None:
        return None, "no image data", ""
    try:
        img, note = _load(source, image_size, opts)
    except Reject as rej:
        return None, str(rej), ""
    except Exception as exc:  # anything else a broken file can trigger stays a rejection
        return None, f"unreadable: {type(exc).__name__}: {exc}".replace("\n", " "), ""
    return img, "", note


def read_stamps(
    root: Path, items: list[tuple[str, int]], image_size: int | None, opts: ReadOptions = ReadOptions()
):
    """Read stamps given as ``(path relative to root, row)``, in order; yields ``read_stamp``'s triples.

    ``row < 0``: the path is an image file. ``row >= 0``: the path is a parquet shard and the
    stamp is the encoded image in row ``row`` of its ``opts.image_column`` column (the
    HuggingFace source); the rows of one shard are read together, only the row groups holding
    them.
    """
    wanted: dict[str, list[int]] = {}
    for rel, row in items:
        if row >= 0:
            wanted.setdefault(rel, []).append(row)
    blobs: dict[tuple[str, int], bytes | None] = {}
    failed: dict[str, str] = {}
    for rel, rows in wanted.items():
        path = root / rel
        if not path.is_file():
            failed[rel] = "missing file"
            continue
        try:
            from astropt.hf import read_parquet_images

            blobs.update(zip(((rel, r) for r in rows), read_parquet_images(path, rows, column=opts.image_column)))
        except Exception as exc:  # a corrupt shard rejects its galaxies, with the reason
            failed[rel] = f"unreadable parquet shard: {type(exc).__name__}: {exc}".replace("\n", " ")
    for rel, row in items:
        if row < 0:
            yield read_stamp(root / rel, image_size, opts)
        elif rel in failed:
            yield None, failed[rel], ""
        else:
            yield read_stamp(blobs[(rel, row)], image_size, opts)
