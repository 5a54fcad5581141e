"""Tests of the paper's linear-probe protocol (astropt.probe).

Run: python -m pytest tests/test_probe.py -q
"""

import numpy as np
import pandas as pd
import pytest

from astropt.probe import PROBE_COLUMNS, numeric_properties, paper_probe, probe_properties


@pytest.fixture
def planted():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 32))
    w = rng.standard_normal(32)
    y = X @ w + 0.05 * rng.standard_normal(2000)
    return X, y, rng


def test_planted_linear_signal_is_recovered(planted):
    X, y, _ = planted
    res = paper_probe(X, y)
    assert res["r2"] > 0.95
    # Noise 0.05 against an IQR of about 1.35 * |w|: the error is tiny in normalised units.
    assert res["median_abs_error"] < 0.05
    assert res["n_train"] + res["n_test"] == res["n"]
    assert res["n_train"] == res["n"] // 2
    assert res["reason"] == ""


def test_pure_noise_has_no_skill(planted):
    X, _, rng = planted
    res = paper_probe(X, rng.standard_normal(len(X)))
    assert res["r2"] < 0.05
    assert res["median_abs_error"] > 0.3


def test_outliers_are_clipped(planted):
    X, y, _ = planted
    base = paper_probe(X, y)
    y_out = y.copy()
    y_out[[3, 500, 1500]] = 1e6  # far beyond 3 MAD
    res = paper_probe(X, y_out)
    assert res["n"] == base["n"] - 3
    assert res["r2"] > 0.95
    # Without clipping the planted outliers stay in.
    assert paper_probe(X, y_out, mad_clip=np.inf)["n"] == len(y)


def test_non_finite_targets_are_dropped(planted):
    X, y, _ = planted
    y = y.copy()
    y[:10] = np.nan
    y[10:15] = np.inf
    res = paper_probe(X, y, mad_clip=np.inf)
    assert res["n"] == len(y) - 15
    assert res["r2"] > 0.95


def test_halves_follow_row_order(planted):
    X, y, _ = planted
    # Spoil the second half only: the fit (first half) is fine, the score collapses.
    y2 = y.copy()
    y2[1000:] = np.random.default_rng(1).permutation(y2[1000:])
    assert paper_probe(X, y2, mad_clip=np.inf)["r2"] < 0.2
    assert paper_probe(X, y, mad_clip=np.inf) == paper_probe(X, y, mad_clip=np.inf)


def test_degenerate_targets_give_nan_not_errors(planted):
    X, _, _ = planted
    few = paper_probe(X[:5], np.arange(5.0))
    assert np.isnan(few["r2"]) and "5" in few["reason"]
    const = paper_probe(X, np.ones(len(X)))
    assert np.isnan(const["median_abs_error"]) and "constant" in const["reason"]
    # IQR 0 but some spread: falls back to the standard deviation.
    y = np.zeros(len(X))
    y[:100] = np.linspace(1, 2, 100)
    res = paper_probe(X, y, mad_clip=np.inf)
    assert np.isfinite(res["r2"]) and "std" in res["reason"]


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="2-D"):
        paper_probe(np.zeros(10), np.zeros(10))
    with pytest.raises(ValueError, match="y must have shape"):
        paper_probe(np.zeros((10, 2)), np.zeros(9))


def _metadata(n, rng):
    return pd.DataFrame(
        {
            "id": np.arange(n) + 1000,
            "split": ["val"] * n,
            "image_path": [f"img_{i}.png" for i in range(n)],
            "flux": rng.standard_normal(n),
            "count": rng.integers(0, 5, n),
            "const": np.full(n, 2.0),
            "flag": rng.random(n) > 0.5,
            "name": [f"g{i}" for i in range(n)],
            "noise": rng.standard_normal(n),
        }
    )


def test_numeric_properties_selection():
    meta = _metadata(50, np.random.default_rng(0))
    meta["row"] = np.arange(50)
    meta["all_nan"] = np.nan
    assert numeric_properties(meta) == ["flux", "count", "noise"]
    assert numeric_properties(meta, exclude=()) == ["id", "flux", "count", "noise", "row"]


def test_probe_properties_joins_by_id_in_any_order(planted):
    X, _, rng = planted
    n = len(X)
    meta = _metadata(n, rng)
    meta["flux"] = X[:, 0] * 2 + 0.01 * rng.standard_normal(n)
    ids = meta["id"].to_numpy()
    shuffled = meta.sample(frac=1.0, random_state=3).reset_index(drop=True)
    out = probe_properties(ids, X, shuffled)
    assert list(out.columns) == PROBE_COLUMNS
    assert list(out["property"]) == ["flux", "count", "noise"]
    flux = out.set_index("property").loc["flux"]
    assert flux["r2"] > 0.95
    assert out.set_index("property").loc["noise", "r2"] < 0.05
    # Same answer as probing the aligned arrays directly, and with an id index.
    assert flux["r2"] == pytest.approx(paper_probe(X, meta["flux"].to_numpy())["r2"])
    again = probe_properties(ids, X, shuffled.set_index("id"), properties=["flux"])
    assert again["r2"].iloc[0] == pytest.approx(flux["r2"])


def test_probe_properties_errors_name_the_problem(planted):
    X, _, rng = planted
    meta = _metadata(len(X), rng)
    ids = meta["id"].to_numpy().copy()
    ids[[0, 7]] = [-1, -2]
    with pytest.raises(ValueError, match=r"2 of 2000 ids .*\[-1, -2\]"):
        probe_properties(ids, X, meta)
    with pytest.raises(ValueError, match="no id matches at all"):
        probe_properties(ids.astype(str), X, meta)
    with pytest.raises(ValueError, match=r"\['mass'\] are not metadata columns"):
        probe_properties(meta["id"].to_numpy(), X, meta, properties=["flux", "mass"])
    with pytest.raises(ValueError, match="no 'id' column"):
        probe_properties(meta["id"].to_numpy(), X, meta.drop(columns="id"))
    with pytest.raises(ValueError, match="one id per row"):
        probe_properties(meta["id"].to_numpy()[:10], X, meta)
