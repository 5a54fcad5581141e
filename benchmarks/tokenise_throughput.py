"""Tokenise throughput per CPU core and bytes on disk per galaxy for each token storage choice.

For synthetic 8-bit RGB PNG stamps (see ``_reference.py``) at the paper's size (512x512, 16 px
patches: 1024 tokens x 768 values) and the embedded default's (64x64, 8 px patches: 64 x 192):

* images/s on one core: ``astropt.tokenise.tokenise_group(..., workers=1)`` and
  ``merge_token_groups`` (one job and its index) over N stamps
  (decode, checks, patchify, spiral order, writing the token shards / index / meta), median of
  ``--repeats`` runs with the PNGs in the page cache; PIL decode alone is shown for comparison;
* bytes on disk per galaxy: the PNG, the token shards as the tokenise job writes them (uint8),
  and the same tokens written by numpy as float16 and float32 ``.npy`` files (the real file
  sizes, headers included), plus what each would take for the 8.6M galaxies of the paper.

Run::

    PYTHONPATH=. python benchmarks/tokenise_throughput.py
    PYTHONPATH=. python benchmarks/tokenise_throughput.py --n 64 --image-size 64 --patch-size 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _reference, when imported from tests

from _reference import machine_info, timer, warm_page_cache, write_stamps  # noqa: E402

from astropt.tokenise import TokeniseSettings, merge_token_groups, tokenise_group  # noqa: E402

PAPER_GALAXIES = 8_600_000  # DESI Legacy Survey DR8 galaxies in Smith42/galaxies
DEFAULT_SIZES = ((512, 16, 256), (64, 8, 2048))  # (image_size, patch_size, n): paper, embedded default


def _decode_rate(paths: list[Path]) -> float:
    """PIL decode alone, images/s (what tokenising cannot avoid)."""
    from PIL import Image

    t0 = timer()
    for p in paths:
        with Image.open(p) as im:
            np.asarray(im.convert("RGB"))
    return len(paths) / (timer() - t0)


def _write_as(tokens_npy: Path, out: Path, dtype: type, chunk: int = 64) -> int:
    """Write the tokens of ``tokens_npy`` cast to ``dtype`` as a .npy file; returns its size."""
    src = np.load(tokens_npy, mmap_mode="r")
    dst = np.lib.format.open_memmap(out, mode="w+", dtype=dtype, shape=src.shape)
    for i in range(0, len(src), chunk):
        dst[i : i + chunk] = src[i : i + chunk]
    dst.flush()
    del dst, src
    return os.path.getsize(out)


def bench_size(root: Path, image_size: int, patch_size: int, n: int, repeats: int, seed: int,
               workers: int) -> dict[str, float]:
    """Throughput and storage figures for one stamp size."""
    meta = write_stamps(root, n, image_size, seed, workers)
    paths = [root / r for r in meta["image_path"]]
    warm_page_cache(paths)
    decode = float(np.median([_decode_rate(paths) for _ in range(repeats)]))
    rates = []
    for r in range(repeats):
        out = root / f"tokens_rep{r}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = timer()
        tokenise_group(meta, root, out, TokeniseSettings(patch_size, image_size), workers=1, log=lambda *a: None)
        counts = merge_token_groups(out, 1, log=lambda *a: None)
        rates.append(n / (timer() - t0))
        if counts["n_galaxies"] != n:
            raise RuntimeError(f"tokenising kept {counts['n_galaxies']} of {n} stamps in {out}")
        if r < repeats - 1:
            shutil.rmtree(out)
    shards = sorted((out / "shards").glob("*.npy"))
    sizes = {
        "png": sum(os.path.getsize(p) for p in paths) / n,
        "uint8": sum(os.path.getsize(f) for f in shards) / n,
        "float16": sum(_write_as(f, root / "tokens_f16.npy", np.float16) for f in shards) / n,
        "float32": sum(_write_as(f, root / "tokens_f32.npy", np.float32) for f in shards) / n,
    }
    for name in ("tokens_f16.npy", "tokens_f32.npy"):
        (root / name).unlink()
    shutil.rmtree(out)
    T = (image_size // patch_size) ** 2
    return {"image_size": image_size, "patch_size": patch_size, "n": n, "T": T,
            "D": patch_size * patch_size * 3, "rate": float(np.median(rates)),
            "rate_min": min(rates), "rate_max": max(rates), "decode": decode, **sizes}


def _kb(b: float) -> str:
    return f"{b / 1e3:,.1f} kB"


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=None,
                   help="stamps per size (default: 256 at 512 px, 2048 at 64 px)")
    p.add_argument("--image-size", type=int, default=None,
                   help="one stamp size instead of the default pair (512 and 64)")
    p.add_argument("--patch-size", type=int, default=None,
                   help="patch side (default: 16 at 512 px, 8 at 64 px, else 16)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per size; medians reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes for the untimed set-up (writing stamps)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="keep the stamps here (reused if present); default: a temp dir")
    args = p.parse_args(argv)

    if args.image_size is None:
        sizes = [(s, args.patch_size or ps, args.n or n) for s, ps, n in DEFAULT_SIZES]
    else:
        sizes = [(args.image_size, args.patch_size or 16, args.n or 256)]
    torch.set_num_threads(1)
    print(f"tokenise throughput: tokenise_group(workers=1) + merge_token_groups on synthetic RGB PNG stamps, "
          f"{args.repeats} repeats, PNGs in the page cache")
    print(f"machine: {machine_info()}")

    tmp = tempfile.TemporaryDirectory(prefix="tokenise_bench_") if args.data_dir is None else None
    base = Path(tmp.name) if tmp is not None else args.data_dir
    try:
        results = [
            bench_size(base / f"{s}px_n{n}_seed{args.seed}", s, ps, n, args.repeats, args.seed, args.workers)
            for s, ps, n in sizes
        ]
    finally:
        if tmp is not None:
            tmp.cleanup()

    print()
    print(f"{'stamps':<9} {'patch':>5} {'tokens x values':>15} {'galaxies':>8}  {'images/s/core':>13} "
          f"{'ms/image':>8} {'min-max images/s':>17}  {'PIL decode only':>15}")
    for r in results:
        s = f"{r['image_size']}x{r['image_size']}"
        tv = f"{r['T']} x {r['D']}"
        print(f"{s:<9} {r['patch_size']:>5} {tv:>15} {r['n']:>8}  {r['rate']:13.1f} "
              f"{1e3 / r['rate']:8.2f} {r['rate_min']:8.1f}-{r['rate_max']:<8.1f}  "
              f"{r['decode']:9.1f} img/s")
    print()
    print("bytes on disk per galaxy (uint8: the shards the tokenise job writes; float16/float32: the same "
          "tokens saved by numpy)")
    print(f"{'stamps':<9} {'PNG':>11} {'uint8':>11} {'float16':>11} {'float32':>11}   "
          f"{'uint8/PNG':>9}   {'8.6M galaxies: PNG / uint8 / float16 / float32':>46}")
    for r in results:
        s = f"{r['image_size']}x{r['image_size']}"
        tb = " / ".join(f"{r[k] * PAPER_GALAXIES / 1e12:.2f}" for k in ("png", "uint8", "float16", "float32"))
        print(f"{s:<9} {_kb(r['png']):>11} {_kb(r['uint8']):>11} {_kb(r['float16']):>11} "
              f"{_kb(r['float32']):>11}   {r['uint8'] / r['png']:8.2f}x   {tb + ' TB':>46}")
    try:
        print("\nload average after: %.2f %.2f %.2f" % os.getloadavg())
    except OSError:
        pass
    return results


if __name__ == "__main__":
    main()
