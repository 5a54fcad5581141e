"""The tokenise stage: a split of galaxy stamps into token shards, one job per shard group.

Stamps are PNG/JPEG/FITS files or encoded images inside parquet shards, read by
:mod:`astropt.images`; each is cut into patches in AstroPT v1's spiral order
(:func:`astropt.patches.image_to_tokens`) and stored once as memory-mappable token shards
(:mod:`astropt.shards`), so training reads tokens without decoding images: ``uint8`` for 8-bit
images, ``float32`` (or ``float16``) for FITS. Normalisation happens at training time.

* :func:`tokenise_part` is the ``tokenise`` rule: job ``0001-of-0004`` of a split, from the
  download's ``metadata.parquet``;
* :func:`tokenise_group` does the work: the job's run of shards (:func:`astropt.shards.group_shards`),
  reusing those an interrupted earlier run finished, and its part of the index;
* :func:`merge_token_groups` is the ``token_index`` rule: the jobs' parts joined into the split's
  ``index.parquet`` (id, split, shard, row), ``meta.json`` and ``rejected.csv``;
* :func:`collect_rejected` is the ``rejected`` rule: every galaxy dropped on the way to tokens.

Reading: 8-bit PNG/JPEG through PIL (RGB when ``n_chan == 3``, any 8-bit mode converted as in
AstroPT v1; greyscale when ``n_chan == 1``; 16-bit and float PNG/TIFF modes are rejected); FITS
through astropy (any file ending ``.fits``, ``.fit``, ``.fts``, optionally ``.gz``): the first
image HDU holding data, a 2-D image one band, a 3-D cube ``(bands, H, W)`` as FITS stores it,
except a cube whose last numpy axis has at most 8 entries while its first has more, read as
``(H, W, bands)``; encoded images in parquet shards (``image_row`` column).

Every bad galaxy is skipped and listed with its reason, never fatal (unless too many): missing,
truncated or corrupt files ("missing file", "unreadable: ..."), another band count ("unexpected
band count: 5 (expected 3)"), NaN/inf pixels ("NaN pixels: 12"), another size ("wrong size:
40x40 px, expected 32x32"), values the storage dtype cannot hold ("values exceed float16 range
..."), a repeated id ("duplicate id ..."). Stamps are cropped, resized or have NaN pixels zeroed
when :class:`TokeniseSettings` asks.

Example::

    settings = TokeniseSettings(patch_size=8, image_size=64)
    tokenise_group(meta, Path("resources/galaxies"), Path("results/tokens/train"), settings)
    merge_token_groups(Path("results/tokens/train"), groups=1)
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from astropt.config import REJECTED_COLUMNS
from astropt.images import ReadOptions, is_fits, read_stamps
from astropt.io import Progress, atomic_write, in_order
from astropt.patches import image_to_tokens
from astropt.shards import (
    SHARD_FORMAT,
    ShardWriter,
    group_shards,
    n_shards,
    parse_part_name,
    part_name,
    read_shard_record,
    shard_stem,
)

__all__ = [
    "TokeniseSettings",
    "tokenise_part",
    "tokenise_group",
    "merge_token_groups",
    "collect_rejected",
]

_FIX_COUNTS = {"cropped": "n_cropped", "resized": "n_resized", "NaN zeroed": "n_nan_zeroed"}  # note -> count key
FIX_NOTES = tuple(_FIX_COUNTS)
"""What reading may do to a stamp that is kept (counted per shard)."""


@dataclass(frozen=True)
class TokeniseSettings:
    """What a split's tokens depend on (checked when made): the workflow's ``tokens`` params
    with ``data.image_size``, ``data.n_chan`` and the HuggingFace source's image column.

    Attributes:
        patch_size: Patch side in pixels.
        image_size: Required stamp side in pixels; ``None``: that of the split's first stamp
            read successfully (which must be square).
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
            FITS file (decided from the whole split's file names, so every job agrees), else
            ``float32``. 8-bit images stored as float keep their 0-255 values; FITS values
            beyond float16's 65504 are rejected under ``"float16"``; under ``"uint8"`` only FITS
            holding integers 0-255 are kept.
        shard_size: Catalogue rows per shard.
        image_column: Column of encoded images in parquet shards.

    Raises:
        ValueError: On an unknown option or a non-positive band count or shard size.
    """

    patch_size: int
    image_size: int | None = None
    n_chan: int = 3
    fit: Literal["reject", "crop", "resize"] = "reject"
    nan: Literal["reject", "zero"] = "reject"
    dtype: Literal["auto", "uint8", "float16", "float32"] = "auto"
    shard_size: int = 2048
    image_column: str = "image"

    def __post_init__(self) -> None:
        _check_options(self.fit, self.nan, self.dtype, self.n_chan, self.shard_size)
        object.__setattr__(self, "n_chan", int(self.n_chan))
        object.__setattr__(self, "shard_size", int(self.shard_size))


# ---------------------------------------------------------------------------------------------
# One tokenise job: its catalogue, its shards, its part of the index
# ---------------------------------------------------------------------------------------------
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


_REASON_COUNTS = {  # count key (in the order the part's .json lists them) -> how its reasons start
    "n_missing": "missing file",
    "n_unreadable": ("unreadable", "unsupported", "no image data"),
    "n_wrong_size": "wrong size",
    "n_wrong_bands": "unexpected band count",
    "n_nan": "NaN pixels",
    "n_out_of_range": "values",
    "n_duplicate": "duplicate id",
}


def _count_reasons(reasons: list[str]) -> dict[str, int]:
    return {key: sum(r.startswith(start) for r in reasons) for key, start in _REASON_COUNTS.items()}


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


@dataclass
class _Job:
    """One tokenise job, resolved: the split's catalogue, the stamp size and storage, the
    settings its shards are fingerprinted with, and its run of the split's shards."""

    image_root: Path
    shard_dir: Path
    ids: list[str]
    rels: list[str]
    rows: list[int]
    dup: dict[int, str]
    opts: ReadOptions
    patch_size: int
    image_size: int
    settings: dict[str, Any]
    n_shards: int
    shards: range
    label: str

    @property
    def row_shape(self) -> tuple[int, int]:
        """``(T, D)``: tokens per stamp and values per token."""
        return (self.image_size // self.patch_size) ** 2, self.patch_size * self.patch_size * self.opts.n_chan

    @property
    def store(self) -> np.dtype:
        return np.dtype(self.opts.dtype)

    def rows_of(self, k: int) -> range:
        """Catalogue rows of shard ``k``."""
        size = self.settings["shard_size"]
        return range(k * size, min((k + 1) * size, len(self.ids)))


def _plan(metadata: pd.DataFrame, image_root: Path, out_dir: Path, s: TokeniseSettings,
          group: int, groups: int, split: str) -> _Job:
    """Check the catalogue, settle the storage dtype and stamp size, find the job's shards."""
    ids, rels, rows = _catalogue_items(metadata, str(out_dir))
    dup = _duplicates(ids)
    dtype = s.dtype
    if dtype == "auto":  # from file names, so every job and shard agrees
        dtype = "float32" if any(is_fits(r) for r in rels) else "uint8"
    opts = ReadOptions(n_chan=s.n_chan, fit=s.fit, nan=s.nan, dtype=dtype, image_column=s.image_column)
    image_size = _resolve_reference(image_root, ids, rels, rows, opts, s.image_size, dup)
    if image_size % s.patch_size:
        raise ValueError(f"Image size ({image_size}) must be divisible by patch size ({s.patch_size})")
    settings = {
        "format": SHARD_FORMAT, "patch_size": int(s.patch_size), "image_size": image_size,
        "n_chan": s.n_chan, "fit": s.fit, "nan": s.nan, "dtype": dtype, "image_column": s.image_column,
        "shard_size": s.shard_size,
    }
    K = n_shards(len(ids), s.shard_size)
    mine = group_shards(K, group, groups)
    shard_dir = out_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    return _Job(image_root, shard_dir, ids, rels, rows, dup, opts, s.patch_size, image_size, settings, K, mine,
                label=f"{split or out_dir.name} job {part_name(group, groups)}")


def _reusable(job: _Job) -> tuple[dict[int, dict], list[tuple[int, str]]]:
    """Records of the job's shards an earlier run finished with the same fingerprint, and the
    ``(shard, fingerprint)`` of those still to tokenise (after sweeping the temporary files of
    a killed earlier run of this job: only it writes these shards)."""
    for k in job.shards:
        for stale in job.shard_dir.glob(f"{shard_stem(k)}.*.tmp-*"):
            stale.unlink(missing_ok=True)
    records: dict[int, dict] = {}
    todo: list[tuple[int, str]] = []
    for k in job.shards:
        r = job.rows_of(k)
        fp = _fingerprint(job.settings, job.image_root, job.ids[r.start : r.stop], job.rels[r.start : r.stop],
                          job.rows[r.start : r.stop])
        rec = read_shard_record(job.shard_dir, k, fp, job.row_shape, job.store)
        if rec is not None:
            records[k] = rec
        else:
            todo.append((k, fp))
    return records, todo


def _log_plan(job: _Job, n_reused: int, todo: list[tuple[int, str]], workers: int, log) -> None:
    mine, K, (T, D) = job.shards, job.n_shards, job.row_shape
    n_mine = sum(len(job.rows_of(k)) for k in mine)
    n_todo = sum(len(job.rows_of(k)) for k, _ in todo)
    log(
        f"{job.label}: shards {mine.start}-{mine.stop - 1} of {K} ({n_mine} galaxies, {job.settings['shard_size']} per shard)"
        if len(mine) else f"{job.label}: no shards (the split has {K})"
    )
    if n_reused:
        log(f"  reusing {n_reused} shard(s) finished by an earlier run; {len(todo)} to tokenise ({n_todo} galaxies)")
    if todo:
        log(
            f"  tokenising {n_todo} galaxies from {job.image_root} ({job.image_size}px, {job.opts.n_chan} band(s), "
            f"{job.patch_size}px patches: {T} tokens x {D} {job.opts.dtype} values, {workers} worker(s))"
        )


def _work_units(job: _Job, todo: list[tuple[int, str]], chunk_size: int) -> tuple[list[tuple], list[tuple]]:
    """Tasks for :func:`_tokenise_chunk` and, for each, ``(shard, fingerprint, a, b, read)``:
    chunks of one shard's rows ``a..b-1`` (``read``: those not repeated ids), at most ~32 MB of
    tokens each, so 2 x workers results in flight stay small even for 512 px stamps."""
    T, D = job.row_shape
    chunk_size = max(1, min(chunk_size, (32 << 20) // (T * D * job.store.itemsize)))
    tasks, plan = [], []
    for k, fp in todo:
        r = job.rows_of(k)
        for a in range(r.start, r.stop, chunk_size):
            b = min(a + chunk_size, r.stop)
            read = [i for i in range(a, b) if i not in job.dup]
            tasks.append((str(job.image_root), [(job.rels[i], job.rows[i]) for i in read], job.patch_size,
                          job.image_size, job.opts))
            plan.append((k, fp, a, b, read))
    return tasks, plan


def _keep_or_reject(job: _Job, writer: ShardWriter, result: tuple, unit: tuple) -> int:
    """Write one chunk's tokens into the open shard and list its galaxies in the shard's record
    (kept, fixed, or rejected with the reason); returns the number rejected."""
    tokens, reasons, notes = result
    k, fp, a, b, read = unit
    if not writer.writing:
        writer.start(k, len(job.rows_of(k)), fp, FIX_NOTES)
    writer.add(tokens)
    outcome = dict(zip(read, zip(reasons, notes)))
    n_rejected = 0
    for i in range(a, b):
        reason, note = outcome.get(i, (job.dup.get(i, ""), ""))
        if reason:
            path = job.rels[i] if job.rows[i] < 0 else f"{job.rels[i]} (row {job.rows[i]})"
            writer.record["rejected"].append([job.ids[i], path, reason])
            n_rejected += 1
        else:
            writer.record["ids"].append(job.ids[i])
            for n in note.split(", ") if note else ():
                writer.record["fixed"][n] += 1
    return n_rejected


def _tokenise_shards(job: _Job, todo: list[tuple[int, str]], records: dict[int, dict], workers: int,
                     chunk_size: int, log) -> None:
    """Tokenise the shards ``todo`` on ``workers`` processes, in order, each written as soon as
    its last chunk is in; their records are added to ``records``."""
    tasks, plan = _work_units(job, todo, chunk_size)
    progress = Progress(sum(len(job.rows_of(k)) for k, _ in todo), log)
    with ShardWriter(job.shard_dir, job.row_shape, job.store) as writer:
        for result, unit in zip(in_order(tasks, _tokenise_chunk, workers), plan):
            n_rejected = _keep_or_reject(job, writer, result, unit)
            k, _, a, b, _ = unit
            if b == job.rows_of(k).stop:  # the shard's last chunk: write it now
                records[k] = writer.finish()
            progress.update(b - a, n_rejected)


def _write_part(job: _Job, out_dir: Path, records: dict[int, dict], n_todo_shards: int, group: int,
                groups: int, split: str, max_reject_fraction: float) -> dict[str, Any]:
    """The job's part of the index (``.parquet``), its rejects (``.rejected.csv``) and its
    summary (``.json``: settings, shards, counts), under ``out_dir/parts/``; returns the summary."""
    mine = job.shards
    n_mine = sum(len(job.rows_of(k)) for k in mine)
    index = pd.DataFrame(
        [(gid, split, k, r) for k in mine for r, gid in enumerate(records[k]["ids"])],
        columns=["id", "split", "shard", "row"],
    ).astype({"shard": np.int64, "row": np.int64})
    rejected = [tuple(x) for k in mine for x in records[k]["rejected"]]
    counts = {"n_total": n_mine, "n_galaxies": len(index), "n_rejected": len(rejected),
              **_count_reasons([r for _, _, r in rejected])}
    counts.update({key: sum(records[k]["fixed"][note] for k in mine) for note, key in _FIX_COUNTS.items()})
    if counts["n_rejected"] > max_reject_fraction * max(n_mine, 1):
        first = "; ".join(f"{g} ({r})" for g, _, r in rejected[:5])
        raise RuntimeError(
            f"{counts['n_rejected']} of {n_mine} images under {job.image_root} were rejected "
            f"(more than {max_reject_fraction:.0%}); first: {first}"
        )
    T, D = job.row_shape
    summary = {
        **job.settings, "n_tokens": T, "token_dim": D, "order": "spiral",
        "layout": "(h p1) (w p2) c -> (h w) (p1 p2 c)", "group": group, "groups": groups,
        "n_shards": job.n_shards,
        "shards": [{"shard": k, "file": f"shards/{shard_stem(k)}.npy", "n": len(records[k]["ids"])} for k in mine],
        **counts, "n_reused": len(mine) - n_todo_shards,
    }
    part = out_dir / "parts" / part_name(group, groups)
    part.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(part.with_suffix(".parquet"), lambda p: index.to_parquet(p, index=False))
    atomic_write(part.with_suffix(".rejected.csv"),
                 lambda p: pd.DataFrame(rejected, columns=REJECTED_COLUMNS).to_csv(p, index=False))
    atomic_write(part.with_suffix(".json"), lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    return summary


def _log_kept(label: str, counts: dict[str, Any], n_todo: int, dt: float, log) -> None:
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
        f"{label}: kept {counts['n_galaxies']} of {counts['n_total']} galaxies"
        + (f" ({n_todo} tokenised in {dt:.1f}s, {n_todo / max(dt, 1e-9):.0f}/s)" if n_todo else "")
        + f"; {counts['n_unreadable']} unreadable images skipped, {counts['n_missing']} missing, "
        f"{counts['n_wrong_size']} wrong size" + "".join(f", {e}" for e in extra)
    )


def tokenise_group(
    metadata: pd.DataFrame,
    image_root: Path,
    out_dir: Path,
    settings: TokeniseSettings,
    *,
    group: int = 0,
    groups: int = 1,
    workers: int = 1,
    max_reject_fraction: float = 0.5,
    chunk_size: int = 256,
    split: str = "",
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Tokenise job ``group`` of ``groups`` of a split: its shards, and a part index.

    Job ``group`` tokenises the contiguous run of the split's shards that
    :func:`astropt.shards.group_shards` gives it, so the tokens never depend on ``groups`` or
    ``workers``. Each shard is written by :class:`astropt.shards.ShardWriter`; one whose record
    exists with the same fingerprint (settings, galaxies, and their files' size and mtime) is
    reused, not re-read: a job that is interrupted and rerun loses at most the shard it was
    writing. The job's part goes to ``out_dir/parts/<part_name>.parquet`` (``id, split, shard,
    row``), ``.rejected.csv`` (``id, image_path, reason``) and ``.json`` (settings and counts);
    :func:`merge_token_groups` joins the parts.

    Args:
        metadata: The whole split's catalogue (every job gets the same table): ``id`` and
            ``image_path`` (relative to ``image_root``, or absolute), optionally ``image_row``
            (row of an encoded image in the parquet shard ``image_path``). A repeated id is
            rejected ("duplicate id ...") after its first occurrence.
        image_root: Folder the image paths are relative to.
        out_dir: The split's token folder (created).
        settings: What the tokens depend on.
        group: This job's number, ``0 <= group < groups``.
        groups: Jobs the split is tokenised by.
        workers: Processes decoding images; the output does not depend on it.
        max_reject_fraction: Raise if more than this fraction of the job's galaxies is rejected.
        chunk_size: Galaxies per work unit of a worker process.
        split: Name written into the index's ``split`` column.
        log: Called with progress lines (about every 10 %) and a summary.

    Returns:
        The job's summary (its ``.json``): settings, ``shards`` (``{shard, file, n}`` each),
        counts ``n_total``, ``n_galaxies``, ``n_rejected``, one ``n_<reason>`` per reason,
        ``n_cropped``, ``n_resized``, ``n_nan_zeroed``, and ``n_reused`` (shards kept from an
        earlier run).

    Raises:
        ValueError: On missing columns, an empty table, an image size not divisible by the
            patch size, or a bad group.
        RuntimeError: If more than ``max_reject_fraction`` of the job's galaxies are rejected.
    """
    image_root, out_dir = Path(image_root), Path(out_dir)
    job = _plan(metadata, image_root, out_dir, settings, group, groups, split)
    records, todo = _reusable(job)
    _log_plan(job, len(records), todo, workers, log)
    t0 = time.perf_counter()
    _tokenise_shards(job, todo, records, workers, chunk_size, log)
    summary = _write_part(job, out_dir, records, len(todo), group, groups, split, max_reject_fraction)
    n_todo = sum(len(job.rows_of(k)) for k, _ in todo)
    _log_kept(job.label, summary, n_todo, time.perf_counter() - t0, log)
    return summary


# ---------------------------------------------------------------------------------------------
# The workflow's stages: tokenise, token_index, rejected
# ---------------------------------------------------------------------------------------------
def tokenise_part(
    metadata: str | Path,
    split: str,
    part: str,
    out_dir: str | Path,
    tokens: dict,
    image_size: int,
    n_chan: int = 3,
    image_column: str = "image",
    *,
    workers: int = 1,
    max_reject_fraction: float = 0.5,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """The ``tokenise`` rule: job ``part`` (``"0001-of-0004"``) of split ``split`` of the
    catalogue ``metadata`` (the download's ``metadata.parquet``; image paths relative to its
    folder) into the split's token folder ``out_dir`` (:func:`tokenise_group`).

    ``tokens`` is the rule's params: the config's ``tokens`` section less the keys that change
    no token (``patch_size``, ``fit``, ``nan``, ``dtype``, ``shard_size`` are read). ``workers``
    and ``max_reject_fraction`` come from the config apart, so that changing them reruns
    nothing; this function joins the two.

    Raises:
        ValueError: If the catalogue has no galaxy in ``split`` (or see :func:`tokenise_group`).
    """
    group, groups = parse_part_name(part)
    present = set(pq.read_schema(metadata).names)
    meta = pd.read_parquet(metadata, columns=[c for c in ("id", "split", "image_path", "image_row") if c in present])
    rows = meta[meta["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"{metadata}: no galaxies in split {split!r} (splits present: {sorted(meta['split'].unique())})")
    settings = TokeniseSettings(
        patch_size=tokens["patch_size"], image_size=image_size, n_chan=n_chan, fit=tokens["fit"], nan=tokens["nan"],
        dtype=tokens["dtype"], shard_size=tokens["shard_size"], image_column=image_column,
    )
    return tokenise_group(
        rows, Path(metadata).parent, Path(out_dir), settings, group=group, groups=groups, workers=workers,
        max_reject_fraction=max_reject_fraction, split=split, log=log,
    )


_SETTING_KEYS = ("format", "patch_size", "image_size", "n_chan", "fit", "nan", "dtype", "image_column",
                 "shard_size", "n_tokens", "token_dim", "n_shards", "order", "layout")


def merge_token_groups(out_dir: Path, groups: int, max_reject_fraction: float = 0.5, log=print) -> dict[str, Any]:
    """The ``token_index`` rule: join the parts written by the ``groups`` tokenise jobs of a
    split into its index.

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


def collect_rejected(download_rejected: str | Path, split_rejected: dict[str, str | Path], out: str | Path, log=print) -> pd.DataFrame:
    """The ``rejected`` rule: all galaxies dropped on the way to tokens, one CSV: stage
    (``download`` or ``tokenise``), split, id, image_path, reason. Ids stay text (``"007"``,
    ``"nan"``)."""
    frames = []
    d = pd.read_csv(download_rejected, dtype=str, keep_default_na=False)
    frames.append(d.assign(stage="download", split=""))
    for split, path in split_rejected.items():
        frames.append(pd.read_csv(path, dtype=str, keep_default_na=False).assign(stage="tokenise", split=split))
    table = pd.concat(frames, ignore_index=True)[["stage", "split", *REJECTED_COLUMNS]]
    table.to_csv(out, index=False)
    counts = table.groupby("stage").size().to_dict() if len(table) else {}
    log(f"{len(table)} galaxies rejected in all ({counts}); listed in {out}")
    return table
