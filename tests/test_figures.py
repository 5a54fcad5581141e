"""Tests of the figures (astropt.figures): each plot writes a PNG; the downstream table.

Run: python -m pytest tests/test_figures.py -q   (add -m "not slow" to skip UMAP)
"""

import numpy as np
import pandas as pd
import pytest

from astropt.figures import (
    SUMMARY_COLUMNS,
    downstream_table,
    plot_downstream,
    plot_examples,
    plot_loss_curves,
    plot_scaling,
    plot_umap,
    umap_embedding,
)
from astropt.scaling import fit_saturating_power_law, fit_scaling_laws

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture
def scaling_table():
    table = pd.DataFrame(
        {
            "size": ["0.04M", "0.14M", "0.42M", "2M"],
            "params": [42_000, 144_000, 416_000, 2_030_000],
            "val_loss": [0.1866, 0.1823, 0.1816, 0.1790],
        }
    )
    table["flops"] = 6.0 * table["params"] * 1.2e6  # 1.2M tokens each
    return table


@pytest.fixture
def scaling_metrics(scaling_table):
    """metrics.csv of each size: validation loss every 100 of 600 steps, NaN between."""
    out = {}
    for row in scaling_table.itertuples():
        step = np.arange(50, 601, 50)
        val = row.val_loss * (1 + 2 * ((step / 600) ** -1.0 - 1))
        out[row.size] = pd.DataFrame({"step": step, "flops": row.flops * step / 600,
                                      "val_loss": np.where(step % 100 == 0, val, np.nan)})
    return out


@pytest.fixture
def probes():
    """Long probe tables (astropt.probe.PROBE_COLUMNS) of three sizes, with size and params."""
    rows = []
    sizes = [("1M", 1_100_000), ("5M", 5_400_000), ("21M", 20_980_000)]
    for i, (size, n) in enumerate(sizes):
        scores = {
            ("redshift", "paper", "median_abs_error"): 0.5 - 0.05 * i,  # improves with size
            ("redshift", "ridge_cv", "r2"): 0.6 + 0.1 * i,
            ("smooth", "paper", "median_abs_error"): 0.3 + 0.01 * i,  # worsens
            ("smooth", "ridge_cv", "r2"): [0.5, 0.7, 0.6][i],  # not monotone
            ("flat", "paper", "median_abs_error"): 0.2,  # constant
            ("flat", "ridge_cv", "r2"): [-0.1, 0.2, 0.3][i],  # smallest model below 0
            ("has_bar", "logistic_cv", "roc_auc"): 0.7 + 0.05 * i,
        }
        for (prop, protocol, metric), value in scores.items():
            rows.append({"size": size, "params": n, "property": prop, "n": 1000, "protocol": protocol,
                         "metric": metric, "value": value, "ci_low": value - 0.01, "ci_high": value + 0.01})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # order must not matter


def _scaling_fit_json(table):
    """fit.json of the scaling rule (astropt.pipeline.scaling) for a losses table."""
    return {
        "sizes": table["size"].tolist(), "n_points": len(table), "ci_level": 0.95,
        "params": fit_scaling_laws(table["params"], table["val_loss"], variable="N"),
        "compute": fit_scaling_laws(table["flops"], table["val_loss"], variable="C"),
    }


def test_scaling_figure_shows_runs_bands_and_the_held_out_size(tmp_path):
    """Every run, the bootstrap band, both intervals in the legend and the held-out panel."""
    from astropt.scaling import fit_study

    rng = np.random.default_rng(3)
    sizes = {"42K": 42_496, "85K": 85_920, "144K": 144_192, "217K": 217_312}
    rows = [{"size": s, "seed": k, "params": n, "flops": 6.0 * n * 8e5, "tokens_seen": 8e5,
             "val_loss": 0.3 * n ** -0.15 * np.exp(0.03 * rng.standard_normal())}
            for s, n in sizes.items() for k in range(3)]
    table = pd.DataFrame(rows)
    fit = fit_study(table, n_boot=200, holdout="217K")
    metrics = {f"{r.size}/seed{r.seed}": pd.DataFrame({"flops": [r.flops / 2, r.flops],
                                                         "val_loss": [r.val_loss * 1.3, r.val_loss]})
               for r in table.itertuples()}
    drawn = plot_scaling(table, fit, tmp_path / "scaling.png", metrics=metrics)
    assert _is_png(tmp_path / "scaling.png")
    titles, legends = drawn["titles"], drawn["legends"]
    assert len(titles) == 3 and "(12 runs)" in titles[0] and titles[1].startswith("Held-out size 217K")
    pl = fit["params"]["power_law"]
    law = next(t for t in legends[0] if t.startswith("$(N_c/N)^\\alpha$"))
    assert "(preferred)" in law and "bootstrap [" in law
    assert f"{pl['alpha_boot_ci'][0]:.3f}"[:4] in law  # the bootstrap interval's numbers, as fitted
    assert "95 % bootstrap band over runs" in legends[0] and "final validation loss of one run" in legends[0]
    assert any("interval for the mean of 3 runs" in t for t in legends[1])
    assert any("not separate evidence" in t.replace("\n", " ") for t in legends[2])


def test_plot_scaling_writes_png(tmp_path, scaling_table, scaling_metrics):
    out = tmp_path / "sub" / "scaling.png"  # parent is created
    plot_scaling(scaling_table, _scaling_fit_json(scaling_table), out, metrics=scaling_metrics)
    assert _is_png(out)
    # Two panels side by side: wider than tall.
    from PIL import Image

    with Image.open(out) as im:
        assert im.width > 1.5 * im.height


def test_plot_scaling_degenerate_and_default_fit(tmp_path, scaling_table, scaling_metrics):
    three = scaling_table.iloc[:3]
    fit = fit_saturating_power_law(three["params"], three["val_loss"])  # one fit, against N
    assert fit["saturating"]["degenerate"]
    plot_scaling(three, fit, tmp_path / "degenerate.png")  # the compute fit is made here
    assert _is_png(tmp_path / "degenerate.png")
    plot_scaling(scaling_table, None, tmp_path / "fitted_here.png", metrics=scaling_metrics)
    assert _is_png(tmp_path / "fitted_here.png")
    plot_scaling(scaling_table.drop(columns="flops"), None, tmp_path / "params_only.png")  # one panel
    assert _is_png(tmp_path / "params_only.png")
    # One size: the "no fit" entries of fit.json, drawn as a note.
    one = scaling_table.iloc[:1]
    no_fit = {v: {"variable": v, "n_points": 1, "error": "a scaling fit needs at least two sizes"} for v in "NC"}
    plot_scaling(one, {"params": no_fit["N"], "compute": no_fit["C"]}, tmp_path / "one.png",
                 metrics={"0.04M": scaling_metrics["0.04M"]})
    assert _is_png(tmp_path / "one.png")
    with pytest.raises(ValueError, match="val_loss"):
        plot_scaling(scaling_table.drop(columns="val_loss"), fit, tmp_path / "x.png")
    with pytest.raises(ValueError, match="metrics of size '2M' lacks columns \\['flops'\\]"):
        plot_scaling(scaling_table, None, tmp_path / "x.png",
                     metrics={"2M": scaling_metrics["2M"].drop(columns="flops")})


def test_downstream_table(probes):
    table = downstream_table(probes)
    assert list(table.columns) == SUMMARY_COLUMNS
    assert len(table) == 7 * 3
    by = {key: g for key, g in table.groupby(["property", "protocol", "metric"])}
    for grp in by.values():
        assert list(grp["size"]) == ["1M", "5M", "21M"]  # by params
        assert grp["spearman_rho"].nunique(dropna=False) == 1  # repeated on each size's row
    red = by["redshift", "paper", "median_abs_error"]
    assert red["relative"].tolist() == pytest.approx([1.0, 0.45 / 0.5, 0.4 / 0.5])  # size / smallest
    assert red["spearman_rho"].iloc[0] == pytest.approx(-1.0)  # error falls with size
    assert red["spearman_p"].iloc[0] == pytest.approx(1 / 3)  # exact: 2 of the 3! orderings
    assert not red["higher_is_better"].iloc[0]
    r2 = by["redshift", "ridge_cv", "r2"]
    assert r2["higher_is_better"].iloc[0] and r2["spearman_rho"].iloc[0] == pytest.approx(1.0)
    assert r2["relative"].iloc[-1] == pytest.approx(0.8 / 0.6)
    assert by["smooth", "paper", "median_abs_error"]["spearman_rho"].iloc[0] == pytest.approx(1.0)
    smooth = by["smooth", "ridge_cv", "r2"]
    assert smooth["spearman_rho"].iloc[0] == pytest.approx(0.5)
    assert smooth["spearman_p"].iloc[0] == pytest.approx(1.0)  # |rho| >= 0.5 in every ordering
    flat = by["flat", "paper", "median_abs_error"]
    assert np.isnan(flat["spearman_rho"].iloc[0]) and np.isnan(flat["spearman_p"].iloc[0])
    assert (flat["relative"] == 1.0).all()
    assert by["flat", "ridge_cv", "r2"]["relative"].isna().all()  # ratio to an R^2 < 0: undefined
    assert by["has_bar", "logistic_cv", "roc_auc"]["higher_is_better"].all()


def test_downstream_table_averages_runs_and_checks_input(probes):
    # seed 1 of every size: 0.1 higher; seed 2 reverses the redshift error's trend
    runs = [probes.assign(seed=0), probes.assign(seed=1, value=probes["value"] + 0.1)]
    rev = probes.assign(seed=2)
    red_err = (rev["property"] == "redshift") & (rev["metric"] == "median_abs_error")
    rev.loc[red_err, "value"] = rev.loc[red_err, "params"].map({1_100_000: 0.3, 5_400_000: 0.35, 20_980_000: 0.4})
    table = downstream_table(pd.concat([*runs, rev]))
    assert len(table) == 21 and (table["n_runs"] == 3).all()
    first = table[(table["property"] == "redshift") & (table["metric"] == "median_abs_error") & (table["size"] == "1M")]
    assert first["value"].iloc[0] == pytest.approx((0.5 + 0.6 + 0.3) / 3)
    assert first["value_sd"].iloc[0] == pytest.approx(np.std([0.5, 0.6, 0.3], ddof=1))
    assert first["relative_sd"].iloc[0] == pytest.approx(first["value_sd"].iloc[0] / first["value"].iloc[0])
    # rho from the run means; two of the three seeds' own sweeps agree with its sign
    assert first["spearman_rho"].iloc[0] == pytest.approx(-1.0)
    assert first["seeds_agree"].iloc[0] == pytest.approx(2 / 3) and first["seeds_rho"].iloc[0] == "-1.00;-1.00;+1.00"
    single = downstream_table(probes)
    assert single["seeds_agree"].isna().all() and single["value_sd"].isna().all() and (single["n_runs"] == 1).all()
    with pytest.raises(ValueError, match=r"lacks columns \['protocol'\]"):
        downstream_table(probes.drop(columns="protocol"))
    with pytest.raises(ValueError, match=r"metrics \['f1'\] of unknown direction"):
        downstream_table(probes.assign(metric="f1"))


def test_spearman_p_value_exact_and_asymptotic():
    from scipy import stats

    from astropt.figures import _spearman

    rho, p = _spearman(np.arange(4.0), np.array([1.0, 2.0, 4.0, 3.0]))
    ref = stats.spearmanr(np.arange(4.0), [1.0, 2.0, 4.0, 3.0])
    assert rho == pytest.approx(ref.statistic)
    assert p == pytest.approx(8 / 24)  # orderings with |rho| >= 0.8, of 4!
    x, y = np.arange(12.0), np.array([1, 3, 2, 5, 4, 6, 8, 7, 9, 11, 10, 12.0])
    assert _spearman(x, y) == pytest.approx(tuple(stats.spearmanr(x, y)))  # 12 sizes: scipy's p
    assert np.isnan(_spearman(np.arange(3.0), np.array([1.0, np.nan, np.nan]))[0])


def test_plot_downstream_writes_png(tmp_path, probes):
    summary = downstream_table(probes)
    plot_downstream(summary, tmp_path / "sub" / "downstream.png")  # three panels, parent created
    assert _is_png(tmp_path / "sub" / "downstream.png")
    plot_downstream(summary, tmp_path / "paper_only.png", panels=[("paper", "median_abs_error")])
    assert _is_png(tmp_path / "paper_only.png")
    with pytest.raises(ValueError, match="none of the panels"):
        plot_downstream(summary, tmp_path / "none.png", panels=[("ridge_cv", "accuracy")])


def test_plot_umap_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    coords = rng.standard_normal((500, 2))
    values = pd.DataFrame(
        {
            "a": coords[:, 0],
            "b": np.where(rng.random(500) < 0.3, np.nan, coords[:, 1]),
            "c": np.full(500, np.nan),
            "d": rng.random(500),
            "e": rng.integers(0, 3, 500),
        }
    )
    plot_umap(coords, values, tmp_path / "umap.png", title="test", gridsize=15)
    assert _is_png(tmp_path / "umap.png")
    plot_umap(coords, values[["a"]], tmp_path / "umap1.png")
    assert _is_png(tmp_path / "umap1.png")
    with pytest.raises(ValueError, match="rows"):
        plot_umap(coords[:10], values, tmp_path / "bad.png")


def test_plot_loss_curves_writes_png(tmp_path):
    metrics = {}
    for size, floor in (("0.04M", 0.2), ("2M", 0.18)):
        step = np.arange(0, 201, 10)
        val = np.where(step % 50 == 0, floor + 0.2 * np.exp(-step / 50), np.nan)
        metrics[size] = pd.DataFrame(
            {
                "step": step,
                "tokens_seen": step * 2016,
                "flops": step * 1e9,
                "train_loss": floor + 0.2 * np.exp(-step / 50) + 0.002,
                "val_loss": val,
                "lr": 1e-3,
                "elapsed_s": step * 0.1,
            }
        )
    plot_loss_curves(metrics, tmp_path / "loss.png")
    assert _is_png(tmp_path / "loss.png")


@pytest.mark.slow
def test_umap_embedding_shape_and_determinism():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 16))
    X[:150] += 3.0
    coords = umap_embedding(X, seed=0)
    assert coords.shape == (300, 2)
    assert np.isfinite(coords).all()
    # The two planted clusters stay apart.
    gap = np.linalg.norm(coords[:150].mean(0) - coords[150:].mean(0))
    assert gap > coords[:150].std(0).max()
    np.testing.assert_allclose(umap_embedding(X, seed=0), coords, rtol=1e-5, atol=1e-5)


def test_umap_embedding_rejects_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        umap_embedding(np.full((10, 3), np.nan))
    with pytest.raises(ValueError, match="2-D"):
        umap_embedding(np.zeros(10))


def test_plot_examples_writes_png(tmp_path):
    from astropt.synthetic import SyntheticConfig, generate

    meta = generate(tmp_path / "syn", SyntheticConfig(n_train=5, n_val=1, n_test=0), log=lambda _: None)
    out = tmp_path / "sub" / "examples.png"
    plot_examples(tmp_path / "syn", meta, out, n=16, seed=1)  # n above the table: all 6 shown
    assert _is_png(out)
    with pytest.raises(ValueError, match="no_such_column"):
        plot_examples(tmp_path / "syn", meta, tmp_path / "x.png", columns=("no_such_column",))
