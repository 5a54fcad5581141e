"""The ``huggingface`` data source: galaxies of a HuggingFace Hub dataset (``Smith42/galaxies``).

:func:`download_huggingface` fetches the parquet shards of each split (``image`` = the HF image
feature, a struct of encoded PNG/JPEG ``bytes`` and a ``path``; ``dr8_id`` = the galaxy id) and the
``metadata.parquet`` catalogue of the dataset repo at one commit, and writes the table the
``tokenise`` stage reads: one row per galaxy with ``id``, ``split``, ``image_path`` (the shard,
relative to the folder of ``metadata.parquet``), ``image_row`` (the galaxy's row in that shard) and
the catalogue's properties. Images stay inside the shards; :func:`read_parquet_images` reads the
encoded bytes of given rows of one shard.

Downloads go through ``huggingface_hub`` (:mod:`astropt.hub`): ``snapshot_download`` of the
selected files at the pinned commit, ``workers`` in parallel; a connection dropped mid-file
resumes inside the library. Files land in ``cache_dir`` under their repo paths
(``hf/data/train-00000-of-00192.parquet``); every file is checked against the size and hash the Hub
lists for it (the LFS sha256, or the git blob id for small files kept in git), and a mismatch is
deleted and fetched again, up to ``retries`` times. The verification is remembered in
``cache_dir/.astropt-verified.json`` (keyed by size and modification time), so a rerun over
~980 GB of cached shards rehashes and downloads nothing.

Subsets: ``max_shards`` keeps the first shards of a split (by name), ``max_galaxies`` the first
galaxies in (shard, row) order; shards past the limit are not downloaded (row counts come from the
parquet footers, read remotely with ``HfFileSystem``: a small ``Range`` request or two per shard).

Bad rows never stop a run unless more than ``max_reject_fraction`` of a split is bad: a missing id,
a null image, an id seen before (the first usable occurrence is kept), a galaxy without a
catalogue row or with several are listed in ``rejected.csv`` with their reason. Whether an image
decodes is the tokeniser's business.

Example::

    from astropt.hf import download_huggingface
    meta = download_huggingface(cfg["data"]["huggingface"], "resources/galaxies/metadata.parquet",
                                "resources/galaxies/rejected.csv")
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from astropt.config import REJECTED_COLUMNS, SPLITS
from astropt.hub import VERIFIED_SIDECAR, Hub, RemoteFile, VerifiedCache
from astropt.io import atomic_write

__all__ = [
    "HuggingFaceSourceError", "download_huggingface", "read_parquet_images", "SOURCE_JSON",
]

REPO_TYPE = "dataset"
SOURCE_JSON = "source.json"
"""Written beside ``metadata.parquet``: repo, requested revision, commit, files with sizes and hashes."""
FOOTER_PROBE_BYTES = 64 << 10  # Range request size when reading a parquet footer remotely (most fit in one)
_CONFIG = "data.huggingface"


class HuggingFaceSourceError(RuntimeError):
    """The dataset cannot be fetched or used as configured; the message names the file or key."""


# --------------------------------------------------------------------------- reading shards


def read_parquet_images(path: str | Path, rows: Sequence[int], column: str = "image") -> list[bytes | None]:
    """Encoded image bytes of some rows of one parquet shard, reading only their row groups.

    Args:
        path: The shard.
        rows: Row numbers in the file (any order, repeats allowed), e.g. the ``image_row`` of the
            galaxies of one ``image_path``.
        column: The image column: an HF image feature (struct with a ``bytes`` field) or plain
            binary.

    Returns:
        One entry per requested row, in the order of ``rows``: the encoded bytes (PNG/JPEG), or
        ``None`` for a null image.

    Raises:
        ValueError: If the file has no such column, or it holds no image bytes.
        IndexError: If a row is outside the file (naming the file, the row and the row count).
    """
    pf = pq.ParquetFile(path)
    _image_leaf(pf, column, path)  # checks the column
    meta = pf.metadata
    wanted = np.asarray(rows, dtype=np.int64).reshape(-1)
    out: list[bytes | None] = [None] * len(wanted)
    if not len(wanted):
        return out
    outside = wanted[(wanted < 0) | (wanted >= meta.num_rows)]
    if len(outside):
        raise IndexError(f"{path}: row {int(outside[0])} is outside the file ({meta.num_rows} rows)")
    starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    groups = np.searchsorted(starts, wanted, side="right") - 1
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    for idx in np.split(order, bounds):
        g = int(groups[idx[0]])
        values = _image_bytes(pf.read_row_group(g, columns=[column]).column(0).combine_chunks())
        for i, value in zip(idx, values.take(pa.array(wanted[idx] - starts[g])).to_pylist()):
            out[i] = value
    return out


def _image_bytes(column: pa.Array) -> pa.Array:
    """The encoded bytes of an image column (null where the image or its bytes are null)."""
    if pa.types.is_struct(column.type):
        return pc.struct_field(column, "bytes")
    return column


def _image_leaf(pf: pq.ParquetFile, column: str, path: str | Path) -> int:
    """Index of the parquet leaf column holding the bytes of image column ``column``."""
    schema = pf.schema_arrow
    if column not in schema.names:
        raise ValueError(f"{path} has no image column {column!r}; its columns are {schema.names}")
    typ = schema.field(column).type
    if pa.types.is_struct(typ):
        if typ.get_field_index("bytes") < 0:
            raise ValueError(
                f"{path}: column {column!r} is a struct without a 'bytes' field ({typ}), not an image feature"
            )
        leaf = f"{column}.bytes"
    elif pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        leaf = column
    else:
        raise ValueError(f"{path}: column {column!r} holds {typ}, not image bytes (binary or struct with 'bytes')")
    pschema = pf.metadata.schema
    return next(i for i in range(len(pschema)) if pschema.column(i).path == leaf)


def _null_image_rows(pf: pq.ParquetFile, leaf: int, column: str, n_rows: int) -> np.ndarray:
    """Which of the first ``n_rows`` rows have a null image, reading images only where needed.

    A row group whose statistics count no null in the bytes column is not read at all (the
    usual case); others are read to find the null rows.
    """
    nulls = np.zeros(n_rows, dtype=bool)
    start = 0
    for g in range(pf.metadata.num_row_groups):
        if start >= n_rows:
            break
        rg = pf.metadata.row_group(g)
        stats = rg.column(leaf).statistics
        if stats is None or not stats.has_null_count or stats.null_count > 0:
            values = _image_bytes(pf.read_row_group(g, columns=[column]).column(0).combine_chunks())
            stop = min(rg.num_rows, n_rows - start)
            nulls[start : start + stop] = pc.is_null(values).to_numpy(zero_copy_only=False)[:stop]
        start += rg.num_rows
    return nulls


# --------------------------------------------------------------------------- selection


def _per_split(value: int | dict | None, split: str) -> int | None:
    """A limit for one split: ``value`` itself (int or None) or its entry for ``split`` (absent = None)."""
    return value.get(split) if isinstance(value, dict) else value


def _split_files(files: dict[str, RemoteFile], split: str, pattern: str, repo: str, commit: str) -> list[RemoteFile]:
    """The files matching a split's glob pattern, sorted by path (``*`` matches across ``/`` too)."""
    matched = sorted(p for p in files if fnmatch.fnmatchcase(p, pattern))
    if not matched:
        folder = pattern.rsplit("/", 1)[0] + "/" if "/" in pattern else ""
        nearby = sorted(p for p in files if p.startswith(folder)) or sorted(files)
        shown = ", ".join(nearby[:6]) + (f", ... ({len(nearby)} in all)" if len(nearby) > 6 else "")
        raise HuggingFaceSourceError(
            f"config key '{_CONFIG}.splits.{split}': pattern {pattern!r} matches no file of {repo} at commit "
            f"{commit}; files there: {shown or 'none'}"
        )
    return [files[p] for p in matched]


def _num_rows(f: RemoteFile, hub: Hub, commit: str, cache_dir: Path, verified: VerifiedCache) -> int:
    """Rows of parquet file ``f`` from its footer: of the verified local copy, else read from the Hub."""
    local = cache_dir / f.path
    if verified.hit(f, local):
        return pq.read_metadata(local).num_rows
    with hub.errors(f"reading the parquet footer of {f.path}", commit), hub.open(commit, f, FOOTER_PROBE_BYTES) as fh:
        try:
            return pq.read_metadata(fh).num_rows
        except pa.ArrowInvalid as err:
            raise HuggingFaceSourceError(f"{f.path} at {commit} is not a readable parquet file ({err})") from err


def _select(
    split: str, shards: list[RemoteFile], max_shards: int | None, max_galaxies: int | None,
    rows: Callable[[RemoteFile], int], workers: int, log: Callable[[str], Any],
) -> list[tuple[RemoteFile, int | None]]:
    """Shards of one split to use, each with the rows to keep (None = all), in name order."""
    if max_shards is not None:
        shards = shards[:max_shards]
    if max_galaxies is None:
        return [(f, None) for f in shards]
    picked: list[tuple[RemoteFile, int | None]] = []
    have = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i in range(0, len(shards), workers):
            batch = shards[i : i + workers]
            for f, n in zip(batch, pool.map(rows, batch)):
                keep = min(n, max_galaxies - have)
                picked.append((f, None if keep == n else keep))
                have += keep
                if have >= max_galaxies:
                    return picked
    log(
        f"huggingface: split {split}: max_galaxies {max_galaxies:,} but the {len(shards)} shard(s) hold "
        f"{have:,} rows; using all of them"
    )
    return picked


def _selection(
    cfg: dict, files: dict[str, RemoteFile], commit: str, rows: Callable[[RemoteFile], int], log: Callable[[str], Any]
) -> tuple[dict[str, list[tuple[RemoteFile, int | None]]], RemoteFile | None]:
    """Each split's shards with the rows to keep (see :func:`_select`), and the catalogue file (or None)."""
    selected = {}
    for split in SPLITS:
        shards = _split_files(files, split, cfg["splits"][split], cfg["repo"], commit)
        selected[split] = _select(
            split, shards, _per_split(cfg["max_shards"], split), _per_split(cfg["max_galaxies"], split), rows,
            cfg["workers"], log,
        )
    if not cfg["metadata_file"]:
        return selected, None
    meta_file = files.get(cfg["metadata_file"])
    if meta_file is None:
        top = sorted(p for p in files if "/" not in p)
        raise HuggingFaceSourceError(
            f"config key '{_CONFIG}.metadata_file': {cfg['metadata_file']!r} is not in {cfg['repo']} at commit "
            f"{commit}; files at its top level: {', '.join(top) or 'none'}"
        )
    return selected, meta_file


# --------------------------------------------------------------------------- the source


def download_huggingface(
    cfg: dict, out_metadata: str | Path, out_rejected: str | Path, log: Callable[[str], Any] = print
) -> pd.DataFrame:
    """Fetch the configured HuggingFace dataset and write the workflow's download outputs.

    Steps: resolve the revision to a commit; list the repo; pick each split's shards by glob
    pattern (sorted by name) and cut them to ``max_shards`` / ``max_galaxies``; download them and
    ``metadata_file`` (:meth:`astropt.hub.Hub.fetch`: in parallel, each verified against its size
    and hash); index every galaxy (shard, row); reject bad rows; join the catalogue rows of the
    kept galaxies.

    Args:
        cfg: The validated ``data.huggingface`` config section: ``repo``, ``revision``
            (None = "main", logged as a warning), ``endpoint``, ``token`` (None = HF_TOKEN or the
            cached login), ``splits`` ({split: glob}), ``metadata_file`` (None = no catalogue),
            ``id_column``, ``image_column``, ``max_shards`` and ``max_galaxies`` (None, an int for
            every split, or {split: int or None}), ``workers``, ``retries``, ``cache_dir``
            (None = ``hf/`` beside ``out_metadata``) and ``max_reject_fraction``.
        out_metadata: The metadata parquet to write. Columns: ``id`` (str), ``split``
            (train / validation / test), ``image_path`` (the shard, relative to the folder of
            ``out_metadata``), ``image_row`` (int64, the galaxy's row in that shard), then the
            catalogue's columns (its id column dropped; a column named like one of the four gets a
            ``meta_`` prefix). Rows ordered by split (train, validation, test), shard, row.
            ``source.json`` is written beside it (repo, revision, commit, files, sizes, hashes).
        out_rejected: CSV of the rows left out: ``id``, ``image_path``, ``reason``.
        log: Called with progress lines and a summary.

    Returns:
        The metadata table (as written).

    Raises:
        HuggingFaceSourceError: On an unknown repo or revision, a split pattern that matches
            nothing, a missing metadata file or column, a shard without the id or image column,
            lasting network errors, a file failing its size / hash check ``retries + 1`` times,
            too little disk space (each naming the file or config key), or when more than
            ``max_reject_fraction`` of a split is rejected (with counts and examples).
    """
    out_metadata, out_rejected = Path(out_metadata), Path(out_rejected)
    out_dir = out_metadata.parent
    cache_dir = Path(cfg["cache_dir"]) if cfg["cache_dir"] else out_dir / "hf"
    hub = Hub(
        cfg["repo"], REPO_TYPE, cfg["endpoint"], cfg["token"], config=_CONFIG, error=HuggingFaceSourceError,
        rule="download", prefix="huggingface", keys=("token", "retries", "cache_dir", "max_galaxies"), log=log,
    )
    commit = hub.resolve(cfg["revision"], "huggingface: dataset")
    verified = VerifiedCache(cache_dir / VERIFIED_SIDECAR)
    rows = functools.partial(_num_rows, hub=hub, commit=commit, cache_dir=cache_dir, verified=verified)
    selected, meta_file = _selection(cfg, hub.list_files(commit), commit, rows, log)
    wanted = list(dict.fromkeys([f for s in SPLITS for f, _ in selected[s]] + ([meta_file] if meta_file else [])))
    _drop_old_partials(cache_dir, wanted, log)
    local = hub.fetch(
        wanted, commit, local_dir=cache_dir, verified=verified, workers=cfg["workers"], retries=cfg["retries"]
    )

    index, rejected = _index_galaxies(selected, local, out_dir, cfg["id_column"], cfg["image_column"])
    if meta_file is not None:
        index, more = _join_metadata(index, local[meta_file.path], cfg["id_column"], log)
        rejected = pd.concat([rejected, more], ignore_index=True)
    _check_rejects(index, rejected, cfg["max_reject_fraction"])

    meta = index.drop(columns=["_shard"]).reset_index(drop=True)
    source = _source_record(cfg, hub.endpoint, commit, selected, meta_file, wanted, meta, rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_metadata, lambda p: meta.to_parquet(p, index=False))
    atomic_write(out_rejected, lambda p: rejected[REJECTED_COLUMNS].to_csv(p, index=False))
    atomic_write(out_dir / SOURCE_JSON, lambda p: p.write_text(json.dumps(source, indent=1) + "\n"))
    _log_summary(meta, rejected, out_metadata, log)
    return meta


def _drop_old_partials(cache_dir: Path, files: list[RemoteFile], log: Callable[[str], Any]) -> None:
    """Delete the partial downloads (``<name>.<hash>.incomplete``) of astropt's former downloader."""
    old = [p for f in files for p in (cache_dir / f.path).parent.glob(f"{Path(f.path).name}.*.incomplete")]
    for path in old:
        path.unlink()
    if old:
        log(f"huggingface: deleted {len(old)} partial download(s) of an earlier astropt version (no longer resumed)")


def _source_record(
    cfg: dict, endpoint: str, commit: str, selected: dict[str, list[tuple[RemoteFile, int | None]]],
    meta_file: RemoteFile | None, wanted: list[RemoteFile], meta: pd.DataFrame, rows: Callable[[RemoteFile], int],
) -> dict[str, Any]:
    """The content of ``source.json``: repo, revision asked for, commit, each split's files and counts, files."""
    return {
        "repo": cfg["repo"],
        "repo_type": REPO_TYPE,
        "endpoint": endpoint,
        "revision": cfg["revision"],
        "commit": commit,
        "splits": {
            s: {
                "pattern": cfg["splits"][s],
                "files": [f.path for f, _ in selected[s]],
                "rows": int(sum(rows(f) if keep is None else keep for f, keep in selected[s])),
                "galaxies": int((meta["split"] == s).sum()),
            }
            for s in SPLITS
        },
        "metadata_file": meta_file.path if meta_file else None,
        "files": [{"path": f.path, "size": f.size, f.hash_kind: f.expected_hash} for f in wanted],
    }


def _log_summary(meta: pd.DataFrame, rejected: pd.DataFrame, out_metadata: Path, log: Callable[[str], Any]) -> None:
    counts = meta["split"].value_counts()
    reasons = rejected["reason"].str.replace(r" \(.*", "", regex=True).value_counts()
    log(
        f"huggingface: kept {len(meta):,} galaxies ("
        + ", ".join(f"{s} {int(counts.get(s, 0)):,}" for s in SPLITS)
        + f"), rejected {len(rejected):,}"
        + (" (" + ", ".join(f"{r}: {n:,}" for r, n in reasons.items()) + ")" if len(rejected) else "")
        + f"; wrote {out_metadata}"
    )


def _index_galaxies(
    selected: dict[str, list[tuple[RemoteFile, int | None]]], local: dict[str, Path], out_dir: Path, id_column: str,
    image_column: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per usable galaxy (id, split, image_path, image_row, _shard) plus the rejected rows.

    Rejected: rows without an id, with a null image, or with an id already seen (in split order
    train, validation, test, then shard and row order; the first usable occurrence is kept).
    """
    parts, rejected = [], []
    for split in SPLITS:
        for f, keep in selected[split]:
            path = local[f.path]
            pf = pq.ParquetFile(path)
            missing = [c for c in (id_column, image_column) if c not in pf.schema_arrow.names]
            if missing:
                raise HuggingFaceSourceError(
                    f"{f.path} has no column(s) {missing} (config keys '{_CONFIG}.id_column', "
                    f"'{_CONFIG}.image_column'); its columns are {pf.schema_arrow.names}"
                )
            n = pf.metadata.num_rows if keep is None else keep
            ids = pf.read(columns=[id_column]).column(0).slice(0, n)
            if not pa.types.is_string(ids.type):
                ids = pc.cast(ids, pa.string())
            rel = Path(os.path.relpath(path, out_dir)).as_posix()
            part = pd.DataFrame({
                "id": ids.to_pandas(),
                "split": split,
                "image_path": rel,
                "image_row": np.arange(n, dtype=np.int64),
                "_shard": len(parts),
            })
            part["_null_image"] = _null_image_rows(pf, _image_leaf(pf, image_column, f.path), image_column, n)
            parts.append(part)
    table = pd.concat(parts, ignore_index=True)

    no_id = table["id"].isna()
    where = "missing id (row " + table.loc[no_id, "image_row"].astype(str) + ")"
    rejected.append(table.loc[no_id].assign(id="", reason=where))
    null_image = ~no_id & table["_null_image"]
    rejected.append(table.loc[null_image].assign(reason="null image"))
    usable = table[~no_id & ~null_image]
    dup = usable["id"].duplicated(keep="first")
    if dup.any():
        first = usable[~dup].set_index("id").loc[usable.loc[dup, "id"]]
        reasons = ("duplicate id (first in " + first["image_path"] + " row " + first["image_row"].astype(str) + ")")
        rejected.append(usable.loc[dup].assign(reason=reasons.to_numpy()))
    index = usable[~dup].drop(columns=["_null_image"]).reset_index(drop=True)
    index["id"] = index["id"].astype(str)
    rejected_df = pd.concat(rejected, ignore_index=True).sort_values(["_shard", "image_row"], kind="stable")
    return index, rejected_df[["id", "image_path", "reason", "split"]].reset_index(drop=True)


def _join_metadata(
    index: pd.DataFrame, path: Path, id_column: str, log: Callable[[str], Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Join the catalogue rows of the indexed galaxies (reading only those rows of ``path``).

    Galaxies without a catalogue row, or with several, are rejected.
    """
    dataset = pads.dataset(path, format="parquet")
    if id_column not in dataset.schema.names:
        raise HuggingFaceSourceError(
            f"metadata file {path} has no id column {id_column!r} (config key '{_CONFIG}.id_column'); "
            f"its columns are {dataset.schema.names}"
        )
    key = pc.field(id_column)
    if not pa.types.is_string(dataset.schema.field(id_column).type):
        key = key.cast(pa.string())
    table = dataset.to_table(filter=key.isin(pa.array(index["id"].to_numpy(), type=pa.string())))
    cat = table.to_pandas()
    cat[id_column] = cat[id_column].astype(str)
    reserved = ("id", "split", "image_path", "image_row", "_shard")
    clashes = {c: f"meta_{c}" for c in cat.columns if c in reserved and c != id_column}
    if clashes:
        log(f"huggingface: metadata columns renamed to avoid clashes: {clashes}")
        cat = cat.rename(columns=clashes)
    rows_per_id = cat[id_column].value_counts()
    several = rows_per_id[rows_per_id > 1]
    no_row = ~index["id"].isin(rows_per_id.index)
    multi = index["id"].isin(several.index)
    n_rows = index.loc[multi, "id"].map(several).astype(str)
    rejected = pd.concat([
        index.loc[no_row].assign(reason="no metadata row"),
        index.loc[multi].assign(reason="duplicate metadata rows (" + n_rows + " rows with this id)"),
    ]).sort_values(["_shard", "image_row"], kind="stable")
    kept = index[~no_row & ~multi]
    cat = cat[~cat[id_column].isin(several.index)].rename(columns={id_column: "id"})
    joined = kept.merge(cat, on="id", how="left", validate="one_to_one", sort=False)
    return joined, rejected[["id", "image_path", "reason", "split"]].reset_index(drop=True)


def _check_rejects(index: pd.DataFrame, rejected: pd.DataFrame, max_fraction: float) -> None:
    """Raise when more than ``max_fraction`` of a split's rows were rejected."""
    for split in SPLITS:
        bad = rejected[rejected["split"] == split]
        n = len(bad) + int((index["split"] == split).sum())
        if n and len(bad) / n > max_fraction:
            examples = "; ".join(f"{r.id or '(no id)'} in {r.image_path}: {r.reason}" for r in bad.head(5).itertuples())
            raise HuggingFaceSourceError(
                f"{len(bad):,} of {n:,} rows of split {split} rejected ({len(bad) / n:.0%} > config key "
                f"'{_CONFIG}.max_reject_fraction' {max_fraction}); e.g. {examples}"
            )
