"""Shared pieces of the data-path benchmarks: test stamps, the v1 reference path, timing helpers.

* :func:`write_stamps` writes synthetic 8-bit RGB PNG stamps that compress like survey cutouts
  (a dark sky with per-pixel noise, a bulge + disc galaxy in the centre, a few neighbours and
  stars), fast enough to make hundreds of 512x512 stamps in a benchmark's set-up.
* :func:`reference_item` is the AstroPT v1 per-galaxy data path written from
  ``shared/docs/astropt-facts.md`` (own code, v1's structure): PIL decode of a PNG from disk,
  float tensor, patchify with reshape/permute (``c (h p1) (w p2) -> (h w) (p1 p2 c)``), per-patch
  ``(x - mean) / (std + 1e-8)`` with torch's default (unbiased) std, spiral order by a Python
  ``sorted`` over the patches' spiral ranks (the rank grid rebuilt per galaxy, as v1 did), then
  ``X = x[:-1]``, ``Y = x[1:]``. It does not call ``astropt.tokenise``, so comparing the two is an
  independent check of the library.

Two deliberate choices keep the reference *faster* than v1, so ratios against it are
conservative: float32 (v1's ``.to(float)`` is float64) and no DataLoader collation
(``torch.stack`` of X and Y into a batch). v1's training path also transposed each image
(``swapaxes(0, 2)``); the reference does not, so that it yields the same tokens as this
project's tokeniser (the transpose costs a view, nothing measurable).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

__all__ = [
    "v1_spiral_rank",
    "reference_item",
    "reference_tokens",
    "write_stamps",
    "warm_page_cache",
    "machine_info",
]


# ---------------------------------------------------------------------------------------------
# The reference (v1-style) per-galaxy path
# ---------------------------------------------------------------------------------------------
def v1_spiral_rank(n: int) -> np.ndarray:
    """Spiral rank of each patch of an ``n x n`` grid, as v1's ``_spiral(n)`` defines it.

    Walks the grid outside-in and clockwise from the top-left corner, one cell at a time in
    plain Python (turn right at an edge or a visited cell), then reverses the walk so that the
    centre comes first.

    Returns:
        ``(n, n)`` int64 grid: ``rank[i, j]`` is the token position of raster patch ``(i, j)``.
    """
    seen = [[False] * n for _ in range(n)]
    walk = []
    i = j = 0
    di, dj = 0, 1  # start going right along the top row
    for _ in range(n * n):
        walk.append(i * n + j)
        seen[i][j] = True
        ni, nj = i + di, j + dj
        if not (0 <= ni < n and 0 <= nj < n) or seen[ni][nj]:
            di, dj = dj, -di  # turn clockwise: right -> down -> left -> up
            ni, nj = i + di, j + dj
        i, j = ni, nj
    rank = np.empty(n * n, dtype=np.int64)
    for pos, raster in enumerate(reversed(walk)):  # reversed: centre first
        rank[raster] = pos
    return rank.reshape(n, n)


def reference_tokens(path: str | Path, patch_size: int) -> torch.Tensor:
    """Per-patch normalised, spiral-ordered tokens of one PNG, the v1 way.

    Args:
        path: An 8-bit RGB image file.
        patch_size: Patch side ``p`` in pixels.

    Returns:
        float32 ``(T, D)`` with ``T = (H / p) * (W / p)`` and ``D = p * p * 3``.
    """
    from PIL import Image

    with Image.open(path) as im:
        img = np.array(im.convert("RGB"))  # (H, W, C) uint8: the decode
    x = torch.from_numpy(img).permute(2, 0, 1).to(torch.float32)  # (C, H, W), like ToTensor
    C, H, W = x.shape
    p = patch_size
    h, w = H // p, W // p
    # c (h p1) (w p2) -> (h w) (p1 p2 c): channel fastest inside each patch
    x = x.reshape(C, h, p, w, p).permute(1, 3, 2, 4, 0).reshape(h * w, p * p * C)  # (T, D)
    x = (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-8)
    rank = v1_spiral_rank(h).flatten().tolist()  # per galaxy, as v1 did
    order = sorted(range(h * w), key=lambda k: rank[k])  # patch with rank k -> position k
    return x[order]


def reference_item(path: str | Path, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One training pair from a PNG, the v1 way: ``X = tokens[:-1]``, ``Y = tokens[1:]``."""
    x = reference_tokens(path, patch_size)
    return x[:-1], x[1:]


# ---------------------------------------------------------------------------------------------
# Synthetic stamps
# ---------------------------------------------------------------------------------------------
def _profile(size: int, rng: np.random.Generator, cx: float, cy: float, r: float, q: float,
             n: float) -> np.ndarray:
    """Sersic profile ``exp(-b_n ((R / r)^(1/n) - 1))``, 1 at the half-light radius ``r``.

    Evaluated only in a box of half-side ``10 r`` around the centre (zero outside).
    """
    out = np.zeros((size, size), np.float32)
    half = int(max(4.0, 10.0 * r))
    y0, y1 = max(0, int(cy) - half), min(size, int(cy) + half + 1)
    x0, x1 = max(0, int(cx) - half), min(size, int(cx) + half + 1)
    if y0 >= y1 or x0 >= x1:
        return out
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    th = rng.uniform(0, np.pi)
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(th) + dy * np.sin(th)
    v = (dy * np.cos(th) - dx * np.sin(th)) / q
    rr = np.sqrt(u * u + v * v + 0.25) / r  # +0.25: no infinite cusp at the pixel centre
    b = 2.0 * n - 1.0 / 3.0  # Ciotti & Bertin's approximation of b_n
    out[y0:y1, x0:x1] = np.exp(-b * (rr ** (1.0 / n) - 1.0))
    return out


def _stamp(size: int, rng: np.random.Generator, noise: np.ndarray) -> np.ndarray:
    """One (size, size, 3) uint8 stamp; ``noise`` is a (2 size, 2 size, 3) N(0, 1) field."""
    s = size / 512.0  # sizes are drawn for 512 px stamps and scaled
    img = np.zeros((size, size, 3), np.float32)
    c = size / 2 + rng.normal(0, 2 * s, 2)
    # Central galaxy: a red de Vaucouleurs bulge and a bluer, inclined exponential disc.
    q = rng.uniform(0.2, 1.0)
    red, blue = np.array([1.0, 0.75, 0.55], np.float32), np.array([0.55, 0.8, 1.0], np.float32)
    img += _profile(size, rng, c[0], c[1], rng.uniform(4, 12) * s, q ** 0.3, 4.0)[..., None] * (
        rng.uniform(30, 80) * red)
    img += _profile(size, rng, c[0], c[1], rng.uniform(15, 60) * s, q, 1.0)[..., None] * (
        rng.uniform(20, 60) * blue * rng.uniform(0.8, 1.2, 3).astype(np.float32))
    # Neighbours and stars.
    for _ in range(int(rng.integers(0, 4))):
        x, y = rng.uniform(0, size, 2)
        img += _profile(size, rng, x, y, rng.uniform(2, 12) * s, rng.uniform(0.3, 1), 1.0)[..., None] * (
            rng.uniform(10, 50) * rng.uniform(0.5, 1.0, 3).astype(np.float32))
    for _ in range(int(rng.integers(0, 3))):
        x, y = rng.uniform(0, size, 2)
        img += _profile(size, rng, x, y, max(0.8, 1.5 * s), 1.0, 0.5)[..., None] * rng.uniform(25, 130)
    # Sky level and noise: a random crop of the noise field (cheaper than fresh draws).
    oy, ox = rng.integers(0, size, 2)
    img += 10.0 + 2.5 * noise[oy : oy + size, ox : ox + size]
    np.rint(img, out=img)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_chunk(out_dir: str, ids: list[int], size: int, seed: int) -> None:
    from PIL import Image

    noise = np.random.default_rng([seed, ids[0], 1]).standard_normal((2 * size, 2 * size, 3), dtype=np.float32)
    for i in ids:
        img = _stamp(size, np.random.default_rng([seed, i]), noise)
        Image.fromarray(img, mode="RGB").save(os.path.join(out_dir, f"gal{i:07d}.png"), compress_level=1)


def write_stamps(out_dir: Path, n: int, image_size: int, seed: int = 0, workers: int = 1) -> pd.DataFrame:
    """Write ``n`` synthetic RGB PNG stamps (``out_dir/images/gal0000042.png``) unless present.

    Args:
        out_dir: Folder; stamps go to ``out_dir/images``. Existing files are kept (reuse a
            folder across runs to skip the set-up).
        n: Number of stamps.
        image_size: Stamp side in pixels.
        seed: Stamp ``i`` is drawn from ``default_rng([seed, i])``.
        workers: Processes writing stamps.

    Returns:
        Table with columns ``id`` and ``image_path`` (relative to ``out_dir``), the input of
        ``astropt.tokenise.tokenise_group``.
    """
    image_dir = Path(out_dir) / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    meta = pd.DataFrame({"id": [f"gal{i:07d}" for i in range(n)]})
    meta["image_path"] = "images/" + meta["id"] + ".png"
    todo = [i for i in range(n) if not (image_dir / f"gal{i:07d}.png").is_file()]
    chunks = [todo[k : k + 32] for k in range(0, len(todo), 32)]
    if workers <= 1:
        for ch in chunks:
            _write_chunk(str(image_dir), ch, image_size, seed)
    else:
        with cf.ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_chunk, [str(image_dir)] * len(chunks), chunks,
                          [image_size] * len(chunks), [seed] * len(chunks)))
    return meta


# ---------------------------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------------------------
def warm_page_cache(paths: list[Path]) -> int:
    """Read files once so that timed reads come from the page cache; returns bytes read."""
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    return total


def machine_info() -> str:
    """One line: CPU, cores, torch threads, load average, library versions."""
    try:
        load = "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "load average n/a"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from PIL import __version__ as pil_version

    return (
        f"{cpu} ({platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__} with "
        f"{torch.get_num_threads()} thread(s), numpy {np.__version__}, Pillow {pil_version}, "
        f"CUDA {'yes' if torch.cuda.is_available() else 'no'}; {load}"
    )


def timer() -> float:
    """Wall clock for the benchmarks."""
    return time.perf_counter()
