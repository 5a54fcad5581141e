"""The galaxy data sources, and the ``download`` stage that makes, indexes or fetches them.

:func:`download` is the ``download`` rule: it writes ``metadata.parquet`` (``id``, ``split``,
``image_path``, then the properties) and ``rejected.csv`` (galaxies dropped at this stage, with
reasons) for the configured ``data.source``: ``synthetic`` (:mod:`astropt.synthetic`, rendered
here), ``folder`` (below) or ``huggingface`` (:mod:`astropt.hf`).

The ``folder`` source indexes images already on disk: :func:`folder_catalogue` matches a
directory of stamps (PNG, JPEG or FITS, found recursively) against a catalogue (CSV or parquet)
of galaxy ids and properties, assigns train / validation / test splits, and returns the
metadata table the ``tokenise`` stage reads (absolute ``image_path``) plus a table of the
galaxies it had to drop (``id``, ``image_path``, ``reason``). Bad rows never stop it: an image
with no catalogue row, a catalogue row with no image, a duplicated id (all copies dropped: which
one is right is unknowable) or an invalid split value is listed with its reason. Whether each
image can be read is the tokeniser's job (:func:`astropt.tokenise.tokenise_group`), which lists
its own rejects.

Example::

    from astropt.sources import write_folder_source
    meta = write_folder_source("stamps/", "catalogue.csv", "resources/galaxies/metadata.parquet",
                               id_column="objid", split_column=None, seed=0)
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from astropt.config import REJECTED_COLUMNS, SPLITS
from astropt.images import FITS_SUFFIXES
from astropt.io import atomic_write
from astropt.synthetic import SyntheticConfig, generate

__all__ = [
    "download", "IMAGE_SUFFIXES", "stamp_id", "scan_stamps", "read_catalogue", "folder_catalogue",
    "write_folder_source",
]

IMAGE_SUFFIXES = tuple(sorted({".png", ".jpg", ".jpeg", *FITS_SUFFIXES}, key=len, reverse=True))
"""Stamp file endings (matched case-insensitively), longest first so ``.fits.gz`` wins over ``.gz``."""

_SPLIT_ALIASES = {
    "train": "train", "validation": "validation", "val": "validation", "valid": "validation", "test": "test",
}


def stamp_id(name: str) -> str | None:
    """A galaxy id from a stamp's file name: the name without its image ending.

    Args:
        name: File name (not a path), e.g. ``"J1234+5678.fits.gz"``.

    Returns:
        ``"J1234+5678"``, or ``None`` if the name does not end in one of :data:`IMAGE_SUFFIXES`.
    """
    lower = name.lower()
    return next((name[: -len(s)] for s in IMAGE_SUFFIXES if lower.endswith(s) and len(name) > len(s)), None)


def scan_stamps(image_dir: str | Path) -> pd.DataFrame:
    """Find every stamp under ``image_dir`` (recursively, following links to folders once).

    Hidden files and folders (names starting with ".", e.g. macOS ``._x.png`` resource forks or
    ``.ipynb_checkpoints``) are skipped.

    Args:
        image_dir: Folder to search.

    Returns:
        Columns ``id`` (file name without ending) and ``image_path`` (absolute), sorted by path.

    Raises:
        FileNotFoundError: If ``image_dir`` is not a folder.
    """
    root = Path(image_dir).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist (config key 'data.folder.images')")
    seen: set[str] = set()
    rows = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back up the tree: do not walk it twice
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            gid = None if name.startswith(".") else stamp_id(name)
            if gid is not None:
                rows.append((gid, os.path.join(dirpath, name)))
    return pd.DataFrame(rows, columns=["id", "image_path"], dtype=str).sort_values("image_path", ignore_index=True)


def _ids_as_str(values: pd.Series) -> pd.Series:
    """Catalogue ids as strings; integral floats (ints that met a NaN) lose their ``.0``."""
    if pd.api.types.is_float_dtype(values):
        whole = values.notna() & np.isfinite(values) & (values == np.round(values))
        if whole[values.notna()].all():
            values = values.astype("Int64")
    out = values.astype(str)
    return out.where(values.notna(), None)


def read_catalogue(catalogue: str | Path, id_column: str = "id") -> pd.DataFrame:
    """Read a CSV (``.csv``, ``.csv.gz``) or parquet (``.parquet``, ``.pq``) catalogue.

    Args:
        catalogue: The file.
        id_column: Column of galaxy ids; read as strings (in a CSV verbatim: ``"007"`` keeps its
            zeros and ``"nan"`` is an id; only an empty cell is a missing id).

    Returns:
        The table, ``id_column`` as str (missing ids as ``None``).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: On another file type or a missing id column (naming the columns present).
    """
    path = Path(catalogue)
    name = path.name.lower()
    if not path.is_file():
        raise FileNotFoundError(f"Catalogue {path} does not exist (config key 'data.folder.catalogue')")
    if name.endswith((".csv", ".csv.gz")):
        table = pd.read_csv(path)
        if id_column in table.columns:  # ids read again verbatim: "nan", "NA", "007" are ids
            table[id_column] = pd.read_csv(
                path, usecols=[id_column], dtype=str, keep_default_na=False, na_values=[""]
            )[id_column]
    elif name.endswith((".parquet", ".pq")):
        table = pd.read_parquet(path)
    else:
        raise ValueError(
            f"Catalogue {path}: unknown file type; use a .csv (or .csv.gz) or .parquet file "
            "(config key 'data.folder.catalogue')"
        )
    if id_column not in table.columns:
        raise ValueError(
            f"Catalogue {path} has no id column {id_column!r} (config key 'data.folder.id_column'); "
            f"its columns are {list(table.columns)}"
        )
    table[id_column] = _ids_as_str(table[id_column])
    return table


def _random_splits(ids: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """Seeded split of ``ids``: galaxies ranked by a hash of (seed, id), test first, then
    validation, the rest train.

    Ranking by a per-id hash (not a permutation of the list) keeps the split stable when
    stamps are added: existing galaxies keep their order, so only a few near the boundaries
    can change split, and none of the test set leaks into training wholesale.
    Each split whose fraction is above 0 gets at least one galaxy (rounded counts otherwise).
    """
    ordered = sorted(ids)
    n = len(ordered)
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if n_test + n_val >= n:
        raise ValueError(
            f"{n} galaxies are too few for a validation fraction of {val_fraction} and a test "
            f"fraction of {test_fraction} (config keys 'data.folder.val_fraction', 'test_fraction'): "
            "no training galaxies would be left"
        )
    keys = [hashlib.blake2b(f"{seed}:{gid}".encode(), digest_size=8).digest() for gid in ordered]
    perm = np.array(sorted(range(n), key=keys.__getitem__), dtype=np.int64)
    split = np.full(n, "train", dtype=object)
    split[perm[:n_test]] = "test"
    split[perm[n_test : n_test + n_val]] = "validation"
    return dict(zip(ordered, split.tolist()))


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) "
            "with a sum below 1 (config keys 'data.folder.val_fraction', 'data.folder.test_fraction')"
        )


def _check_catalogue_columns(
    cat: pd.DataFrame, catalogue: str | Path, id_column: str, path_column: str | None, split_column: str | None
) -> list[str]:
    """The catalogue's property columns, after checking that the named columns exist and that
    none clashes with a column the folder source writes itself."""
    for col, key in ((path_column, "path_column"), (split_column, "split_column")):
        if col is not None and col not in cat.columns:
            raise ValueError(
                f"Catalogue {catalogue} has no column {col!r} (config key 'data.folder.{key}'); "
                f"its columns are {list(cat.columns)}"
            )
    props = [c for c in cat.columns if c not in {id_column, path_column, split_column}]
    for col, key in (("id", "id_column"), ("split", "split_column"), ("image_path", "path_column")):
        if col in props:
            raise ValueError(
                f"Catalogue {catalogue} has a column {col!r} that the folder source writes itself; "
                f"rename it, or name it in config key 'data.folder.{key}'"
            )
    return props


def _named_stamps(
    files: pd.DataFrame, cat: pd.DataFrame, ids: pd.Series, root: Path, path_column: str,
    rejected: list[tuple[str, str, str]],
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Path mode: the stamps the catalogue's ``path_column`` names (``id``, ``image_path``) that
    exist, and the path each id names (listed when it is missing). Stamps that no row names are
    appended to ``rejected``."""
    paths = [
        os.path.normpath(os.path.join(root, p)) if isinstance(p, str) and p.strip() else ""
        for p in cat[path_column]
    ]
    stamps = pd.DataFrame({"id": ids, "image_path": paths}, dtype=str)
    wanted = dict(zip(ids, paths))
    named = {os.path.normpath(p) for p in paths if p}
    for gid, path in zip(files["id"], files["image_path"]):
        if os.path.normpath(path) not in named:
            rejected.append((gid, path, f"no metadata row (no {path_column!r} value names this file)"))
    stamps = stamps[stamps["image_path"] != ""]  # rows without a path: "no image file" later
    stamps = stamps[[os.path.isfile(p) for p in stamps["image_path"]]]
    return stamps, wanted


def _split_values(ids: pd.Series, raw: pd.Series) -> dict[str, str]:
    """Each id's split from the catalogue's split column, or the reason it is invalid."""
    split_of: dict[str, str] = {}
    for gid, value in zip(ids, raw):
        if pd.isna(value):
            split_of[gid] = "invalid split: missing (expected train, validation or test)"
        else:
            split_of[gid] = _SPLIT_ALIASES.get(
                str(value).strip().lower(), f"invalid split: {value!r} (expected train, validation or test)"
            )
    return split_of


def _reasons(
    gid: str, found: list[str], rows: int, path_users: dict[str, int], split_of: dict[str, str],
    path_column: str | None, split_column: str | None, rel: Callable[[str], str],
) -> list[str]:
    """Why galaxy ``gid`` (stamps ``found``, ``rows`` catalogue rows) cannot be kept; [] if it can."""
    reasons = []
    if len(found) > 1:
        shown = ", ".join(rel(p) for p in found[:3]) + (", ..." if len(found) > 3 else "")
        where = "image files" if path_column is None else "catalogue rows with an image"
        reasons.append(f"duplicate id: {len(found)} {where} ({shown})")
    if rows > 1 and not (path_column is not None and len(found) > 1):
        reasons.append(f"duplicate id: {rows} catalogue rows")
    if not found:
        reasons.append("no image file")
    if rows == 0:
        reasons.append("no metadata row")
    shared = [p for p in found if path_users.get(p, 0) > 1]
    if shared:
        reasons.append(f"duplicate image path: {rel(shared[0])} is named by {path_users[shared[0]]} catalogue rows")
    if not reasons and split_column is not None and split_of[gid] not in SPLITS:
        reasons.append(split_of[gid])
    return reasons


def _folder_tables(
    cat: pd.DataFrame, id_column: str, props: list[str], good: list[str], split_of: dict[str, str],
    stamps_by_id: dict[str, list[str]], rejected: list[tuple[str, str, str]],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The folder source's metadata (the ``good`` galaxies: id, split, image_path, properties;
    sorted by id) and rejected tables (sorted by id and path)."""
    kept = cat[cat[id_column].isin(set(good))].copy()
    kept_ids = kept[id_column].tolist()
    meta = pd.DataFrame(
        {"id": kept_ids, "split": [split_of[g] for g in kept_ids], "image_path": [stamps_by_id[g][0] for g in kept_ids]}
    )
    meta = pd.concat([meta, kept[props].reset_index(drop=True)], axis=1).sort_values("id", ignore_index=True)
    rejected_df = pd.DataFrame(rejected, columns=REJECTED_COLUMNS).sort_values(
        ["id", "image_path"], ignore_index=True, kind="stable"
    )
    return meta, rejected_df


def _log_folder_source(log, files: pd.DataFrame, n_rows: int, root: Path, catalogue, meta: pd.DataFrame,
                       rejected: pd.DataFrame) -> None:
    by_split = meta["split"].value_counts()
    by_reason = rejected["reason"].str.split(":|;", regex=True).str[0].value_counts()
    log(
        f"folder source: {len(files)} stamps under {root}, {n_rows} catalogue rows "
        f"in {catalogue}; kept {len(meta)} galaxies ("
        + ", ".join(f"{s} {int(by_split.get(s, 0))}" for s in SPLITS)
        + f"), rejected {len(rejected)}"
        + (" (" + ", ".join(f"{r}: {n}" for r, n in by_reason.items()) + ")" if len(rejected) else "")
    )


def _no_match(catalogue, id_column: str, ids: pd.Series, root: Path, files: pd.DataFrame,
              path_column: str | None, rejected: list[tuple[str, str, str]]) -> ValueError:
    source = (
        f"ids from file names, e.g. {', '.join(files['id'].head(3)) or 'none'}"
        if path_column is None
        else f"paths from column {path_column!r}"
    )
    return ValueError(
        f"No galaxy of catalogue {catalogue} (id column {id_column!r}, e.g. "
        f"{', '.join(ids.head(3)) or 'none'}) matches a stamp under {root} ({source}); "
        f"{len(rejected)} rejected, first: " + "; ".join(f"{g} ({r})" for g, _, r in rejected[:3])
    )


def folder_catalogue(
    image_dir: str | Path,
    catalogue: str | Path,
    id_column: str = "id",
    path_column: str | None = None,
    split_column: str | None = None,
    val_fraction: float = 0.01,
    test_fraction: float = 0.01,
    seed: int = 0,
    log: Callable[[str], Any] = print,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Match a folder of stamps to a catalogue: the metadata of the ``folder`` source.

    Without ``path_column``, a galaxy's id is its stamp's file name without the image ending
    (:data:`IMAGE_SUFFIXES`, any case; ``a/J12.fits.gz`` has id ``J12``), found recursively under
    ``image_dir``. With it, each catalogue row names its stamp (relative to ``image_dir``, or
    absolute) and stamps that no row names are rejected. Ids are compared as strings. A galaxy
    is kept when it has exactly one stamp, one catalogue row and a valid split; every other
    case is a row of ``rejected`` (one per stamp file, or one with an empty ``image_path``),
    reasons joined by "; ": "no metadata row", "no image file", "duplicate id: 2 image files
    (a/x.png, b/x.png)", "duplicate id: 2 catalogue rows", "duplicate image path: ...",
    "missing id", "invalid split: 'dev' (expected train, validation or test)".

    Splits come from ``split_column`` (train / validation / test; "val" and "valid" mean
    validation; case and surrounding spaces ignored), else from a seeded random split of the
    sorted ids (independent of file-system order) with ``test_fraction`` and ``val_fraction``
    of them (rounded, at least one when the fraction is above 0).

    Args:
        image_dir, catalogue: Folder of stamps (.png .jpg .jpeg .fits .fit .fts, FITS optionally
            .gz); CSV or parquet with ``id_column`` and any properties.
        id_column, path_column, split_column: Catalogue columns of galaxy ids, of stamp paths
            relative to ``image_dir`` (``None``: match ids to file names) and of splits
            (``None``: a seeded random split).
        val_fraction, test_fraction, seed: Shares and seed of a random split.
        log: Called with a summary of the counts.

    Returns:
        ``(metadata, rejected)``: ``id``, ``split``, ``image_path`` (absolute), then the
        catalogue's other columns, sorted by id; ``id``, ``image_path``, ``reason``.

    Raises:
        FileNotFoundError: If the folder or the catalogue does not exist.
        ValueError: On a bad catalogue file or column, invalid fractions, a catalogue column
            that clashes with ``split`` / ``image_path``, or when no galaxy is left.
    """
    _check_fractions(val_fraction, test_fraction)
    root = Path(image_dir).absolute()
    files = scan_stamps(root)
    cat = read_catalogue(catalogue, id_column)
    props = _check_catalogue_columns(cat, catalogue, id_column, path_column, split_column)
    no_id = cat[id_column].isna()
    rejected: list[tuple[str, str, str]] = [("", "", "missing id")] * int(no_id.sum())
    cat = cat[~no_id].reset_index(drop=True)
    ids = cat[id_column]
    # Each galaxy's candidate stamps: from file names, or from the catalogue's path column.
    stamps, wanted = (files, {}) if path_column is None else _named_stamps(files, cat, ids, root, path_column, rejected)
    stamps_by_id = stamps.groupby("id", sort=False)["image_path"].agg(list).to_dict()
    n_rows = ids.value_counts().to_dict()
    path_users = stamps["image_path"].value_counts().to_dict()
    split_of = _split_values(ids, cat[split_column]) if split_column is not None else {}

    def rel(p: str) -> str:
        return os.path.relpath(p, root) if p else p

    good: list[str] = []
    for gid in sorted(set(stamps_by_id) | set(n_rows)):
        found = stamps_by_id.get(gid, [])
        reasons = _reasons(gid, found, n_rows.get(gid, 0), path_users, split_of, path_column, split_column, rel)
        if reasons:
            rejected.extend((gid, p, "; ".join(reasons)) for p in found or [wanted.get(gid, "")])
        else:
            good.append(gid)
    if not good:
        raise _no_match(catalogue, id_column, ids, root, files, path_column, rejected)
    if split_column is None:
        split_of = _random_splits(good, val_fraction, test_fraction, seed)
    meta, rejected_df = _folder_tables(cat, id_column, props, good, split_of, stamps_by_id, rejected)
    _log_folder_source(log, files, len(cat) + int(no_id.sum()), root, catalogue, meta, rejected_df)
    return meta, rejected_df


def write_folder_source(
    image_dir: str | Path, catalogue: str | Path, out_metadata: str | Path, out_rejected: str | Path | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Run :func:`folder_catalogue` and write its tables (atomically: temp file, then rename).

    Args:
        image_dir: Folder of stamps.
        catalogue: CSV or parquet catalogue.
        out_metadata: The metadata parquet to write.
        out_rejected: The rejected table's CSV (``None``: ``rejected.csv`` beside ``out_metadata``).
        **kwargs: Passed to :func:`folder_catalogue` (``id_column``, ``seed``, ``log``, ...).

    Returns:
        The metadata table.
    """
    meta, rejected = folder_catalogue(image_dir, catalogue, **kwargs)
    out = Path(out_metadata)
    atomic_write(out, lambda p: meta.to_parquet(p, index=False))
    rejected_csv = out.with_name("rejected.csv") if out_rejected is None else out_rejected
    atomic_write(rejected_csv, lambda p: rejected.to_csv(p, index=False))
    return meta


def download(
    data: Mapping[str, Any],
    out_metadata: str | Path,
    out_rejected: str | Path,
    seed: int,
    config_data: Mapping[str, Any] | None = None,
    log: Callable[[str], Any] = print,
) -> pd.DataFrame:
    """The ``download`` rule: fetch, make or index the galaxies into ``out_metadata`` (id,
    split, image_path, properties; images beside it for the synthetic source) and
    ``out_rejected`` (galaxies dropped at this stage, with reasons).

    Args:
        data: The rule's params: ``source``, ``image_size``, ``n_chan`` and the chosen source's
            section, less its operational keys.
        out_metadata, out_rejected: The rule's outputs.
        seed: The data's seed (synthetic galaxies, a folder source's random split).
        config_data: The validated config's ``data`` section. Keys of the chosen source that
            ``data`` lacks (worker counts, retries, the access token, a mirror's URL) are
            taken from it: they change no output, so they are not params and changing them
            reruns nothing.
        log: Called with progress lines.

    Raises:
        ValueError: On an unknown source.
    """
    source = data["source"]
    params = dict(data.get(source, {}))
    for key, value in (config_data or {}).get(source, {}).items():
        params.setdefault(key, value)
    out_dir = Path(out_metadata).parent
    if source == "synthetic":
        shutil.rmtree(out_dir / "images", ignore_errors=True)  # no stale stamps from a larger run
        meta = generate(out_dir, SyntheticConfig(**params, image_size=data["image_size"], seed=seed), log=log)
        pd.DataFrame(columns=REJECTED_COLUMNS).to_csv(out_rejected, index=False)
        return meta
    if source == "folder":
        return write_folder_source(
            params["images"], params["catalogue"], out_metadata, out_rejected, id_column=params["id_column"],
            path_column=params["path_column"], split_column=params["split_column"],
            val_fraction=params["val_fraction"], test_fraction=params["test_fraction"], seed=seed, log=log,
        )
    if source == "huggingface":
        from astropt.hf import download_huggingface  # only here: it brings the Hub client

        return download_huggingface(params, out_metadata, out_rejected, log=log)
    raise ValueError(f"config key 'data.source': unknown source {source!r} (synthetic, folder or huggingface)")
