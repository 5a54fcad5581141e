"""Linear probes of galaxy properties from embeddings, following the AstroPT paper.

The paper (arXiv:2405.14930, "Downstream tasks") probes each property with a plain
linear regression on the mean-pooled embedding:

1. drop galaxies whose target is missing (NaN / inf);
2. drop outliers further than 3 median absolute deviations from the median;
3. normalise the target as ``(y - median) / IQR``;
4. fit ``sklearn.linear_model.LinearRegression`` on the first half of the rows;
5. report the median absolute error on the second half.

Everything here is deterministic: the halves follow row order, so the caller
shuffles (with a seed) beforehand if the order carries structure.

Example::

    from astropt.probe import probe_properties
    table = probe_properties(ids, embeddings, metadata)  # one row per property
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

#: Fewer kept rows than this and a probe returns NaN scores instead of fitting.
MIN_ROWS = 10

#: Columns of the table returned by :func:`probe_properties`.
PROBE_COLUMNS = ["property", "n", "n_train", "n_test", "median_abs_error", "r2", "reason"]


def _nan_result(n: int, reason: str) -> dict:
    return {
        "n": int(n),
        "n_train": 0,
        "n_test": 0,
        "median_abs_error": float("nan"),
        "r2": float("nan"),
        "reason": reason,
    }


def paper_probe(X: np.ndarray, y: np.ndarray, mad_clip: float = 3.0) -> dict:
    """Probe one property with the paper's linear-regression protocol.

    Rows whose target or embedding is not finite are dropped, then rows with
    ``|y - median(y)| > mad_clip * MAD`` (MAD unscaled; no clipping when the MAD is
    0, as for vote fractions that are mostly 0). The target is normalised as
    ``(y - median) / IQR`` (the standard deviation if the IQR is 0), a linear
    regression is fitted on the first half of the remaining rows, in the given
    order, and scored on the second half.

    Args:
        X: Embeddings, shape (n, d).
        y: Target property, shape (n,).
        mad_clip: Outlier threshold in median absolute deviations; ``inf`` or a
            non-positive value disables clipping.

    Returns:
        ``{"n", "n_train", "n_test", "median_abs_error", "r2", "reason"}``: the
        number of kept rows and of train / test rows, the median absolute error and
        R^2 on the held-out half in normalised target units, and ``reason``: ``""``
        when the scores are valid, else why they are NaN (or a note, e.g. that the
        MAD was 0 so nothing was clipped).

    Raises:
        ValueError: If ``X`` is not 2-D or ``y`` does not have one value per row.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n, d), got shape {X.shape}")
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"y must have shape ({len(X)},) to match X {X.shape}, got {y.shape}")

    keep = np.isfinite(y) & np.isfinite(X).all(axis=1)
    X, y = X[keep], y[keep]
    if len(y) < MIN_ROWS:
        return _nan_result(len(y), f"only {len(y)} finite rows (< {MIN_ROWS})")

    note = ""
    med = np.median(y)
    if np.isfinite(mad_clip) and mad_clip > 0:
        mad = np.median(np.abs(y - med))
        if mad > 0:
            inlier = np.abs(y - med) <= mad_clip * mad
            X, y = X[inlier], y[inlier]
            med = np.median(y)
        else:
            note = "MAD is 0: no outlier clipping"
    n = len(y)
    if n < MIN_ROWS:
        return _nan_result(n, f"only {n} rows after outlier clipping (< {MIN_ROWS})")

    q25, q75 = np.percentile(y, [25, 75])
    scale = q75 - q25
    if not scale > 0:
        scale = np.std(y)
        if not scale > 0:
            return _nan_result(n, "target is constant (IQR and std are 0)")
        note = "; ".join(filter(None, [note, "IQR is 0: normalised by std"]))
    z = (y - med) / scale

    n_train = n // 2
    model = LinearRegression().fit(X[:n_train], z[:n_train])
    pred = model.predict(X[n_train:])
    z_test = z[n_train:]
    return {
        "n": int(n),
        "n_train": int(n_train),
        "n_test": int(n - n_train),
        "median_abs_error": float(np.median(np.abs(pred - z_test))),
        "r2": float(r2_score(z_test, pred)),
        "reason": note,
    }


def numeric_properties(
    metadata: pd.DataFrame,
    exclude: Sequence[str] = ("id", "split", "image_path", "row"),
) -> list[str]:
    """Names of the metadata columns worth probing.

    Args:
        metadata: Galaxy metadata, one row per galaxy.
        exclude: Column names never returned (identifiers, bookkeeping).

    Returns:
        Numeric (integer or float, not boolean) columns, in table order, that are
        not in ``exclude`` and have at least two distinct finite values.
    """
    names = []
    for name in metadata.columns:
        col = metadata[name]
        if name in exclude or pd.api.types.is_bool_dtype(col):
            continue
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_complex_dtype(col):
            continue
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
        values = values[np.isfinite(values)]
        if len(values) and values.min() < values.max():
            names.append(name)
    return names


def _metadata_by_id(metadata: pd.DataFrame) -> pd.DataFrame:
    if "id" in metadata.columns:
        table = metadata.set_index("id")
    elif metadata.index.name == "id":
        table = metadata
    else:
        raise ValueError(
            "metadata has no 'id' column (or index) to join embeddings on; "
            f"columns are {list(metadata.columns)[:10]}"
        )
    if not table.index.is_unique:
        dup = table.index[table.index.duplicated()].unique()
        raise ValueError(
            f"metadata has {len(dup)} duplicated ids, e.g. {list(dup[:5])}; ids must be unique"
        )
    return table


def probe_properties(
    ids: np.ndarray,
    X: np.ndarray,
    metadata: pd.DataFrame,
    properties: list[str] | None = None,
    mad_clip: float = 3.0,
) -> pd.DataFrame:
    """Probe every property of the galaxies whose embeddings are given.

    Rows of ``X`` are matched to metadata rows through ``ids`` (the metadata
    ``id`` column, or its index if named ``id``); the order of ``ids`` is kept, so
    the train / test halves are the first / second half of ``ids``.

    Args:
        ids: Galaxy ids, shape (n,), one per row of ``X``.
        X: Embeddings, shape (n, d).
        metadata: Galaxy metadata with an ``id`` column; any row order.
        properties: Columns to probe; default :func:`numeric_properties`.
        mad_clip: Outlier threshold, see :func:`paper_probe`.

    Returns:
        One row per property with columns ``property, n, n_train, n_test,
        median_abs_error, r2, reason``.

    Raises:
        ValueError: If ``ids`` and ``X`` disagree in length, ids are missing from
            the metadata (the count and the first few are named), or a requested
            property is not a metadata column.
    """
    ids = np.asarray(ids)
    X = np.asarray(X)
    if ids.ndim != 1 or X.ndim != 2 or len(ids) != len(X):
        raise ValueError(
            f"ids (shape {ids.shape}) must list one id per row of X (shape {X.shape})"
        )
    table = _metadata_by_id(metadata)
    missing_mask = ~pd.Index(ids).isin(table.index)
    if missing_mask.any():
        missing = ids[missing_mask]
        hint = ""
        if missing_mask.all():
            hint = (
                f" (no id matches at all: ids have dtype {ids.dtype}, metadata ids "
                f"{table.index.dtype}; convert one to the other)"
            )
        raise ValueError(
            f"{missing_mask.sum()} of {len(ids)} ids are missing from the metadata, "
            f"e.g. {missing[:5].tolist()}{hint}"
        )

    if properties is None:
        properties = numeric_properties(table.reset_index())
    else:
        unknown = [p for p in properties if p not in table.columns]
        if unknown:
            raise ValueError(
                f"properties {unknown} are not metadata columns; available: "
                f"{list(table.columns)}"
            )

    rows = table.loc[ids]
    records = []
    for prop in properties:
        y = pd.to_numeric(rows[prop], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        records.append({"property": prop, **paper_probe(X, y, mad_clip=mad_clip)})
    return pd.DataFrame.from_records(records, columns=PROBE_COLUMNS)
