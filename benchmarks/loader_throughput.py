"""Training-loader throughput per CPU core: AstroPT v1's per-galaxy path vs this project's loader.

Measures galaxies/s on one CPU core (``torch.set_num_threads(1)``, one process) for 512x512x3
stamps (1024 tokens x 768 values), side by side in one run:

1. reference (v1, written from ``shared/docs/astropt-facts.md``, see ``_reference.py``): open
   a PNG from disk with PIL, float tensor, patchify, per-patch ``(x - mean) / (std + 1e-8)``,
   spiral order by a Python sort over the patches' spiral ranks, ``X = x[:-1]``, ``Y = x[1:]``;
2. this project's loader (``astropt.train``): the stamps tokenised once by
   ``astropt.tokenise`` (one job and its index) into ``uint8 (n, T, D)`` token shards, memory-mapped
   by ``load_tokens``; per step a batch of B galaxies drawn with ``sample_indices`` and gathered
   (sorted rows, one ``np.take`` per shard straight into a staging buffer, pinned on a GPU machine) by
   ``astropt.loader.BatchGatherer``, exactly as ``train.py`` does. Two figures: *host only* (the CPU's whole share when normalisation runs on the
   GPU, the project's design) and *host + CPU normalise* (``normalise(..., "patch")`` on the
   CPU, for a CPU-only machine), both ending in ``X = x[:, :-1]``, ``Y = x[:, 1:]``.

Extra rows try host-side variants (the earlier fancy-index + copy, unsorted rows, ``pread``
into the staging buffer, contiguous blocks of a block-shuffled order, a memmap whose
pages are already mapped), to show what a faster loader would need.

Before timing, the PNGs and the token shards are read once, so both paths read from the page
cache: the steady state of training on a data set that fits in RAM. Each timed repeat of the
project's loader opens a fresh memmap and takes one epoch (every galaxy once), so each page is
touched for the first time in that repeat (page faults included). The script first checks
that both paths give the same normalised X/Y for a batch of galaxies (the comparison is fair
only if they do the same work). Figures are medians over ``--repeats``; other jobs on the
machine slow both paths (the load average is printed).

Run::

    PYTHONPATH=. python benchmarks/loader_throughput.py             # 512 stamps of 512x512
    PYTHONPATH=. python benchmarks/loader_throughput.py --n 64 --image-size 64 --patch-size 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _reference, when imported from tests

from _reference import (  # noqa: E402
    machine_info,
    reference_item,
    timer,
    warm_page_cache,
    write_stamps,
)

from astropt.patches import normalise  # noqa: E402
from astropt.shards import TokenSplit, load_tokens  # noqa: E402
from astropt.tokenise import TokeniseSettings, merge_token_groups, tokenise_group  # noqa: E402
from astropt.loader import BatchGatherer  # noqa: E402
from astropt.train import sample_indices  # noqa: E402

ANCHOR_REFERENCE = 80.0  # galaxies/s/core of v1's path in the facts doc (512x512, unloaded core)
GOAL = 100.0  # issue 3: the loader at least 100x the reference per core


# ---------------------------------------------------------------------------------------------
# The project's loader, host side (mirrors the ``batch()`` closure of astropt/train.py)
# ---------------------------------------------------------------------------------------------
def staging_buffer(batch: int, n_tok: int, dim: int) -> torch.Tensor:
    """The host tensor a batch is copied into: pinned when CUDA is available (for the H2D copy)."""
    return torch.empty((batch, n_tok, dim), dtype=torch.uint8, pin_memory=torch.cuda.is_available())


def ours_raw(gather: BatchGatherer, idx: np.ndarray) -> torch.Tensor:
    """Host work of one step: the library's gather of the batch from the memmap into its
    staging buffer (``astropt.loader.BatchGatherer``, as ``train.py`` uses it)."""
    return gather(idx)


def ours_batch(gather: BatchGatherer, idx: np.ndarray, mode: str = "patch") -> tuple[torch.Tensor, torch.Tensor]:
    """One training pair, normalised on the CPU: ``X (B, T-1, D)``, ``Y (B, T-1, D)`` float32.

    Note the rows come back in sorted order (as in ``train.py``): row k is galaxy
    ``np.sort(idx)[k]``.
    """
    x = normalise(ours_raw(gather, idx), mode)  # (B, T, D) float32
    return x[:, :-1], x[:, 1:]


# ---------------------------------------------------------------------------------------------
# Timed runs
# ---------------------------------------------------------------------------------------------
def _epoch_runner(tok_dir: Path, batch: int, seed: int,
                  step_fn: Callable[[TokenSplit, np.ndarray, int, torch.Tensor], object],
                  fresh_memmap: bool = True) -> Callable[[int], tuple[int, float]]:
    """A timed repeat = one epoch (every galaxy once) in batches of ``batch``.

    ``fresh_memmap``: open the token file anew for each repeat (outside the clock), so every
    page is touched for the first time (page faults counted); otherwise one memmap whose pages
    were all mapped by an untimed first epoch.
    """
    shared = load_tokens(tok_dir)

    def run(repeat: int) -> tuple[int, float]:
        split = load_tokens(tok_dir) if fresh_memmap else shared  # opened outside the clock
        n, (n_tok, dim) = len(split), split.tokens.shape[1:]
        staging = staging_buffer(batch, n_tok, dim)
        gather = BatchGatherer(split.tokens, batch, "cpu")
        steps = n // batch
        t0 = timer()
        for step in range(steps):
            idx = sample_indices((repeat * steps + step) * batch, batch, n, seed)
            step_fn(split, idx, step, staging, gather)
        return steps * batch, timer() - t0

    if not fresh_memmap:
        run(0)  # map every page once
    return run


def _host(split, idx, step, staging, gather):
    return ours_raw(gather, idx)


def _host_norm(split, idx, step, staging, gather):
    return ours_batch(gather, idx, "patch")


def _fancy_index(split, idx, step, staging, gather):
    # the loader before astropt.loader: fancy index (a copy), then a copy into staging
    return staging.copy_(torch.from_numpy(split.tokens[np.sort(idx)]))


def _host_unsorted(split, idx, step, staging, gather):
    return staging.copy_(torch.from_numpy(split.tokens[idx]))


def _host_take(split, idx, step, staging, gather):
    # One shard's memmap gathered directly, without ShardedTokens (its overhead, by difference).
    # mode="clip": numpy buffers `out` (a second copy) in the default mode="raise"
    np.take(split.tokens.shard(0), np.sort(idx), axis=0, out=staging.numpy(), mode="clip")
    return staging


def _host_block(split, idx, step, staging, gather):
    # Block-shuffled order: each step reads one contiguous run of rows (a block picked by the
    # shuffle), straight into the staging buffer.
    b, n = staging.shape[0], len(split)
    start = min((int(idx[0]) // b) * b, n - b)
    staging.numpy()[...] = split.tokens[start : start + b]
    return staging


class _Pread:
    """Host step reading each galaxy's rows with ``os.preadv`` straight into the staging buffer."""

    def __init__(self, tok_dir: Path) -> None:
        split = load_tokens(tok_dir)
        self.starts = split.tokens.offsets
        paths = [Path(tok_dir) / s["file"] for s in split.meta["shards"]]
        self.header = [np.load(p, mmap_mode="r").offset for p in paths]  # bytes of each .npy header
        self.fds = [os.open(p, os.O_RDONLY) for p in paths]

    def __call__(self, split, idx, _step, staging, _gather=None):
        row = int(np.prod(split.tokens.shape[1:]))  # bytes per galaxy (uint8)
        buf = staging.numpy()
        rows = np.sort(idx)
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        for k, (i, s) in enumerate(zip(rows, shard)):
            os.preadv(self.fds[s], [buf[k]], self.header[s] + int(i - self.starts[s]) * row)
        return staging

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def _reference_runner(paths: list[Path], patch_size: int, per_repeat: int) -> Callable[[int], tuple[int, float]]:
    """A timed repeat = ``per_repeat`` galaxies (a different slice each repeat) the v1 way."""

    def run(repeat: int) -> tuple[int, float]:
        sel = [paths[(repeat * per_repeat + k) % len(paths)] for k in range(per_repeat)]
        t0 = timer()
        for p in sel:
            reference_item(p, patch_size)
        return len(sel), timer() - t0

    return run


def time_interleaved(runners: dict[str, Callable[[int], tuple[int, float]]],
                     repeats: int) -> dict[str, list[float]]:
    """galaxies/s of every runner per repeat, running repeat r of all of them back to back.

    Interleaving keeps each repeat's rates under the same machine load, so the per-repeat
    ratios to the reference are fair even when other jobs come and go.
    """
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(repeats):
        for name, run in runners.items():
            items, seconds = run(r)
            rates[name].append(items / max(seconds, 1e-12))
    return rates


# ---------------------------------------------------------------------------------------------
# Correctness: both paths give the same X / Y
# ---------------------------------------------------------------------------------------------
def compare_paths(tok_dir: Path, image_root: Path, id_to_path: dict[str, str], patch_size: int,
                  batch: int, seed: int, position: int = 0) -> dict[str, torch.Tensor]:
    """X / Y of one batch from both paths, for the same galaxies (same order).

    Returns:
        ``{"X_ref", "Y_ref", "X_ours", "Y_ours"}``, each ``(B, T-1, D)`` float32.
    """
    split = load_tokens(tok_dir)
    n_tok, dim = split.tokens.shape[1:]
    idx = sample_indices(position, batch, len(split), seed)
    X, Y = ours_batch(BatchGatherer(split.tokens, batch, "cpu"), idx, "patch")
    rows = np.sort(idx)  # ours_batch returns sorted rows
    pairs = [reference_item(image_root / id_to_path[split.ids[r]], patch_size) for r in rows]
    return {
        "X_ref": torch.stack([p[0] for p in pairs]),
        "Y_ref": torch.stack([p[1] for p in pairs]),
        "X_ours": X.clone(),
        "Y_ours": Y.clone(),
    }


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=512, help="synthetic stamps (galaxies in the token file)")
    p.add_argument("--batch", type=int, default=8, help="galaxies per step (the paper's micro-batch)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats; medians are reported")
    p.add_argument("--image-size", type=int, default=512, help="stamp side in pixels")
    p.add_argument("--patch-size", type=int, default=16, help="patch side in pixels")
    p.add_argument("--ref-n", type=int, default=128, help="galaxies per reference repeat (it is slow)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=2048,
                   help="galaxies per token shard (the config's tokens.shard_size)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes for the untimed set-up (writing and tokenising stamps)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="keep stamps and tokens here (reused if present); default: a temp dir")
    p.add_argument("--no-extra", action="store_true", help="skip the rows of host-side variants")
    args = p.parse_args(argv)
    if args.n < args.batch:
        p.error(f"--n ({args.n}) must be at least --batch ({args.batch})")

    torch.set_num_threads(1)
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="loader_bench_")
        root = Path(tmp.name)
    else:
        root = args.data_dir / f"{args.image_size}px_n{args.n}_seed{args.seed}"
    try:
        return _run(args, root)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _run(args: argparse.Namespace, root: Path) -> dict[str, float]:
    S, P, B = args.image_size, args.patch_size, args.batch
    T, D = (S // P) ** 2, P * P * 3
    print(f"loader throughput: {args.n} synthetic {S}x{S}x3 stamps, {P}px patches "
          f"({T} tokens x {D} values = {T * D / 1e3:.0f} kB/galaxy as uint8), batch {B}, "
          f"{args.repeats} repeats")
    print(f"machine: {machine_info()}")

    t0 = timer()
    meta = write_stamps(root, args.n, S, args.seed, args.workers)
    tok_dir = root / f"tokens_p{P}_s{args.shard_size}"
    if not (tok_dir / "meta.json").is_file():
        tokenise_group(meta, root, tok_dir, TokeniseSettings(P, S, shard_size=args.shard_size), workers=args.workers,
                       log=lambda *a: None)
        merge_token_groups(tok_dir, 1, log=lambda *a: None)
    paths = [root / r for r in meta["image_path"]]
    png_bytes = warm_page_cache(paths)
    shards = load_tokens(tok_dir).meta["shards"]
    tok_bytes = warm_page_cache([tok_dir / s["file"] for s in shards])
    print(f"set-up {timer() - t0:.0f}s (untimed): PNGs {png_bytes / args.n / 1e3:.0f} kB/galaxy, "
          f"{len(shards)} token shard(s) {tok_bytes / 1e6:.0f} MB; both read once, so timed reads come from the "
          f"page cache (steady-state training on data that fits in RAM)")

    # Same galaxies, same X / Y: the speed comparison is fair only if this holds.
    out = compare_paths(tok_dir, root, dict(zip(meta["id"], meta["image_path"])), P, B, args.seed)
    diff = max(float((out["X_ref"] - out["X_ours"]).abs().max()), float((out["Y_ref"] - out["Y_ours"]).abs().max()))
    torch.testing.assert_close(out["X_ours"], out["X_ref"])
    torch.testing.assert_close(out["Y_ours"], out["Y_ref"])
    print(f"check: reference and project X/Y agree for {B} galaxies (max |diff| {diff:.1e})")

    REF, HOST, NORM = (
        "reference v1: PNG decode, patchify, patch norm, sort",
        "ours, host only: np.take from memmap into staging",
        "ours, host + CPU normalise('patch')",
    )
    runners = {
        REF: _reference_runner(paths, P, min(args.ref_n, args.n)),
        HOST: _epoch_runner(tok_dir, B, args.seed, _host),
        NORM: _epoch_runner(tok_dir, B, args.seed, _host_norm),
    }
    pread = _Pread(tok_dir)
    extra = [] if args.no_extra else [
        ("fancy index + copy into staging (2 copies)", _fancy_index, True),
        ("unsorted indices (no np.sort)", _host_unsorted, True),
        ("os.preadv straight into staging (1 copy)", pread, True),
        ("contiguous block into staging (block shuffle)", _host_block, True),
        ("as ours, memmap pages already mapped", _host, False),
    ]
    if len(shards) == 1:
        extra.append(("np.take on the shard memmap directly, pages mapped", _host_take, False))
    for name, fn, fresh in extra:
        runners["  " + name] = _epoch_runner(tok_dir, B, args.seed, fn, fresh)
    rates = time_interleaved(runners, args.repeats)
    pread.close()

    med = {name: float(np.median(r)) for name, r in rates.items()}
    # x ref: median over repeats of (rate / reference rate in the same repeat)
    xref = {name: float(np.median(np.array(r) / np.array(rates[REF]))) for name, r in rates.items()}
    width = max(len(name) for name in runners)
    print()
    print(f"{'path (1 core, median of ' + str(args.repeats) + ')':<{width}}  {'galaxies/s':>10}  "
          f"{'ms/galaxy':>9}  {'min-max galaxies/s':>19}  {'x ref':>6}")
    for k, name in enumerate(runners):
        if k == 3:
            print("host-side variants (not in the library), host only:")
        r = rates[name]
        print(f"{name:<{width}}  {med[name]:10.1f}  {1e3 / med[name]:9.3f}  "
              f"{min(r):9.1f}-{max(r):<9.1f}  {xref[name]:6.1f}")
    ref, host, norm = med[REF], med[HOST], med[NORM]
    print()
    verdict = "met" if xref[HOST] >= GOAL else "NOT met"
    print(f"ratio ours/reference (same run, paired repeats): host only {xref[HOST]:.1f}x "
          f"(goal >= {GOAL:.0f}x: {verdict}), host + CPU normalise {xref[NORM]:.1f}x")
    if (S, P) == (512, 16):  # the anchor is for the paper's stamps
        print(f"vs the facts doc's anchor ({ANCHOR_REFERENCE:.0f} galaxies/s/core, 512x512): "
              f"host only {host / ANCHOR_REFERENCE:.1f}x, host + CPU normalise {norm / ANCHOR_REFERENCE:.1f}x")
    try:
        print("load average after: %.2f %.2f %.2f" % os.getloadavg())
    except OSError:
        pass
    result = {"reference": ref, "host": host, "host_normalise": norm,
              "ratio_host": xref[HOST], "ratio_host_normalise": xref[NORM]}
    result.update({name.strip(): med[name] for name in list(runners)[3:]})
    return result


if __name__ == "__main__":
    main()
