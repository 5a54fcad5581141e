"""Tests of the figures (astropt.figures), checked on what they draw (panels, the points and
lines against the input, labels, legends, colour bars), and of the downstream table.

Run: python -m pytest tests/test_figures.py -q   (add -m "not slow" to skip UMAP)
"""

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection, PolyCollection

from astropt.figures import (
    plot_downstream,
    plot_examples,
    plot_loss_curves,
    plot_scaling,
    plot_umap,
    umap_embedding,
)
from astropt.probe import SUMMARY_COLUMNS, downstream_table
from astropt.scaling import fit_scaling_laws
from figure_helpers import (  # saved_figures: a fixture
    colorbars,
    data_lines,
    is_colorbar,
    legend_texts,
    panels,
    saved_figures,  # noqa: F401
    shown_number,
    xy,
)
from scaling_helpers import fit_saturating_power_law


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
    """fit.json of the scaling rule (astropt.scaling.write_fits) for a losses table."""
    return {
        "sizes": table["size"].tolist(), "n_points": len(table), "ci_level": 0.95,
        "params": fit_scaling_laws(table["params"], table["val_loss"], variable="N"),
        "compute": fit_scaling_laws(table["flops"], table["val_loss"], variable="C"),
    }


def _runs(ax):
    """(x, y) of the runs' points in a scaling panel (its scatter of small points)."""
    (runs,) = [c for c in ax.collections if isinstance(c, PathCollection) and not c.get_label().startswith("held-out")]
    return runs.get_offsets()


def _curves(ax):
    """The validation curves of a compute panel: lines with markers that are no size mean."""
    means = {id(c.lines[0]) for c in ax.containers}
    return [line for line in data_lines(ax) if line.get_marker() == "o" and id(line) not in means]


def _law_lines(ax, variable):
    """The fitted laws' lines of a panel, by law, with their legend labels."""
    prefixes = {"saturating": f"$L_\\infty + ({variable}_c/{variable})^\\alpha$",
                "power_law": f"$({variable}_c/{variable})^\\alpha$"}
    return {law: line for law, prefix in prefixes.items() for line in data_lines(ax)
            if line.get_label().startswith(prefix)}


def _assert_alpha_shown(label, alpha):
    """The exponent in a legend label is the fit's, to the digits shown."""
    shown, decimals = shown_number(label, "α")
    assert abs(shown - alpha) <= 0.5 * 10.0**-decimals + 1e-12, (label, alpha)


def test_scaling_figure_shows_runs_bands_and_the_held_out_size(tmp_path, saved_figures):
    """Every run, the size means, the bootstrap band, both intervals in the legend and the
    held-out panel: the law fitted without 217K, extrapolated to it, beside its runs."""
    from astropt.scaling import fit_study, predict

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
    fig = saved_figures[tmp_path / "scaling.png"]
    ax_n, ax_h, ax_c = panels(fig)
    assert len(fig.axes) == 3
    titles, legends = drawn["titles"], drawn["legends"]
    assert titles == [ax.get_title() for ax in (ax_n, ax_h, ax_c)]
    assert len(titles) == 3 and "(12 runs)" in titles[0] and titles[1].startswith("Held-out size 217K")
    pl = fit["params"]["power_law"]
    law = next(t for t in legends[0] if t.startswith("$(N_c/N)^\\alpha$"))
    assert "(preferred)" in law and "bootstrap [" in law
    assert f"{pl['alpha_boot_ci'][0]:.3f}"[:4] in law  # the bootstrap interval's numbers, as fitted
    _assert_alpha_shown(law, pl["alpha"])
    assert "95 % bootstrap band over runs" in legends[0] and "final validation loss of one run" in legends[0]
    assert any("interval for the mean of 3 runs" in t for t in legends[1])
    assert any("not separate evidence" in t.replace("\n", " ") for t in legends[2])

    # every run, and each size's geometric mean with the sd of its log losses as the bar
    np.testing.assert_allclose(_runs(ax_n), table[["params", "val_loss"]].to_numpy())
    np.testing.assert_allclose(_runs(ax_c), table[["flops", "val_loss"]].to_numpy())
    logs = table.assign(logL=np.log(table["val_loss"])).groupby("size", sort=False)
    for ax, column in ((ax_n, "params"), (ax_c, "flops")):
        means = [c for c in ax.containers if len(c.lines[0].get_xdata())]  # not the legend stand-in
        assert len(means) == len(sizes)
        for bar, (size, grp) in zip(means, logs):
            (x,), (y,) = bar.lines[0].get_xdata(), bar.lines[0].get_ydata()
            assert x == grp[column].iloc[0] and y == pytest.approx(np.exp(grp["logL"].mean()))
            (seg,) = bar.lines[2][0].get_segments()
            sd = grp["logL"].std()
            assert sorted(seg[:, 1]) == pytest.approx([y * np.exp(-sd), y * np.exp(sd)])
    # the preferred law through the points, with its band over the fit's grid
    lines = _law_lines(ax_n, "N")
    x, y = lines["power_law"].get_xdata(), lines["power_law"].get_ydata()
    np.testing.assert_allclose(y, predict(fit["params"], x, "power_law"), rtol=1e-12)
    (band,) = [c for c in ax_n.collections if c.get_label().startswith("95 % bootstrap band")]
    verts = band.get_paths()[0].vertices
    b = fit["params"]["band"]
    assert verts[:, 0].min() == pytest.approx(min(b["N"])) and verts[:, 0].max() == pytest.approx(max(b["N"]))
    assert verts[:, 1].min() == pytest.approx(min(b["power_law"]["lo"]))
    assert verts[:, 1].max() == pytest.approx(max(b["power_law"]["hi"]))
    # the held-out panel: the other sizes' runs, the held-out runs apart, the law without them
    h = fit["holdout"]
    held = table[table["size"] == "217K"]
    np.testing.assert_allclose(_runs(ax_h), table[table["size"] != "217K"][["params", "val_loss"]].to_numpy())
    (held_runs,) = [c for c in ax_h.collections if c.get_label() == "held-out 217K: its runs (not fitted)"]
    np.testing.assert_allclose(held_runs.get_offsets(), held[["params", "val_loss"]].to_numpy())
    (extrapolated,) = [line for line in data_lines(ax_h) if "extrapolated" in line.get_label()]
    x = extrapolated.get_xdata()
    assert x.min() < 42_496 and x.max() > h["N"]  # from the smallest fitted size past the held-out one
    np.testing.assert_allclose(extrapolated.get_ydata(), predict(h["fit"], x, h["law"]), rtol=1e-12)
    intervals = [c for c in ax_h.containers if c.get_label().startswith("prediction, 95 % interval")]
    assert len(intervals) == 2
    for bar, key in zip(intervals, ("pi_run", "pi_mean")):  # a bar each, the mean's with a marker
        (seg,) = bar.lines[2][0].get_segments()
        assert sorted(seg[:, 1]) == pytest.approx(h[key]) and seg[0, 0] == pytest.approx(h["N"], rel=0.07)
    assert intervals[1].lines[0].get_ydata()[0] == pytest.approx(h["predicted"])
    (observed,) = [line for line in ax_h.get_lines() if line.get_label().startswith("mean of the held-out runs")]
    assert observed.get_ydata()[0] == pytest.approx(h["observed_mean"])
    curves = _curves(ax_c)
    assert len(curves) == len(metrics)  # one validation curve per run
    for line, df in zip(curves, metrics.values()):
        np.testing.assert_allclose(xy(line), df[["flops", "val_loss"]].to_numpy())


def test_plot_scaling_draws_each_run_its_fits_and_curves(tmp_path, saved_figures, scaling_table, scaling_metrics):
    from astropt.scaling import predict

    out = tmp_path / "sub" / "scaling.png"  # parent is created
    fit = _scaling_fit_json(scaling_table)
    plot_scaling(scaling_table, fit, out, metrics=scaling_metrics)
    fig = saved_figures[out]
    ax_n, ax_c = panels(fig)  # two panels side by side
    assert len(fig.axes) == 2 and ax_n.get_position().x1 <= ax_c.get_position().x0
    assert ax_n.get_title() == "Final validation loss vs model size (4 runs)"
    assert ax_c.get_title() == "Final validation loss vs training compute"
    assert ax_n.get_xlabel() == "parameters N (excluding position embedding)"
    assert ax_c.get_xlabel() == "training compute C (FLOPs)"
    assert ax_n.get_ylabel() == ax_c.get_ylabel() == "validation loss"
    assert ax_n.get_xscale() == ax_n.get_yscale() == ax_c.get_xscale() == "log"
    for ax, column, variable, key in ((ax_n, "params", "N", "params"), (ax_c, "flops", "C", "compute")):
        # one point per run at its (N or C, final loss), named by its size
        np.testing.assert_allclose(_runs(ax), scaling_table[[column, "val_loss"]].to_numpy())
        assert [t.get_text() for t in ax.texts] == scaling_table["size"].tolist()
        np.testing.assert_allclose([t.xy for t in ax.texts], scaling_table[[column, "val_loss"]].to_numpy())
        # both laws of the fit, over the runs' range, with the fit's exponent in the legend
        lines = _law_lines(ax, variable)
        assert set(lines) == {"saturating", "power_law"}
        for law, line in lines.items():
            x = line.get_xdata()
            assert x.min() < scaling_table[column].min() and x.max() > scaling_table[column].max()
            np.testing.assert_allclose(line.get_ydata(), predict(fit[key], x, law), rtol=1e-12)
            assert line.get_label() in legend_texts(ax)
            _assert_alpha_shown(line.get_label(), fit[key][law]["alpha"])
    # the compute panel: one validation curve per size, its evaluated points, and their key
    curves = _curves(ax_c)
    assert len(curves) == len(scaling_metrics)
    for line, (size, df) in zip(curves, scaling_metrics.items()):
        ok = df[np.isfinite(df["val_loss"])]
        np.testing.assert_allclose(xy(line), ok[["flops", "val_loss"]].to_numpy())
    assert set(scaling_table["size"]) <= set(legend_texts(ax_c))
    assert ax_c.get_legend().get_title().get_text() == "validation loss\nduring training"


def test_plot_scaling_degenerate_and_default_fit(tmp_path, saved_figures, scaling_table, scaling_metrics):
    three = scaling_table.iloc[:3]
    fit = fit_saturating_power_law(three["params"], three["val_loss"])  # one fit, against N
    assert fit["saturating"]["degenerate"]
    plot_scaling(three, fit, tmp_path / "degenerate.png")  # the compute fit is made here
    ax_n, ax_c = panels(saved_figures[tmp_path / "degenerate.png"])
    assert len(_runs(ax_n)) == len(_runs(ax_c)) == 3
    assert any("DEGENERATE" in t for t in legend_texts(ax_n))
    assert set(_law_lines(ax_c, "C")) >= {"power_law"}  # fitted here against compute
    plot_scaling(scaling_table, None, tmp_path / "fitted_here.png", metrics=scaling_metrics)
    ax_n, ax_c = panels(saved_figures[tmp_path / "fitted_here.png"])
    assert _law_lines(ax_n, "N") and _law_lines(ax_c, "C") and len(_curves(ax_c)) == 4
    plot_scaling(scaling_table.drop(columns="flops"), None, tmp_path / "params_only.png")  # one panel
    (ax_n,) = saved_figures[tmp_path / "params_only.png"].axes
    np.testing.assert_allclose(_runs(ax_n), scaling_table[["params", "val_loss"]].to_numpy())
    # One size: the "no fit" entries of fit.json, drawn as a note.
    one = scaling_table.iloc[:1]
    no_fit = {v: {"variable": v, "n_points": 1, "error": "a scaling fit needs at least two sizes"} for v in "NC"}
    plot_scaling(one, {"params": no_fit["N"], "compute": no_fit["C"]}, tmp_path / "one.png",
                 metrics={"0.04M": scaling_metrics["0.04M"]})
    axes = panels(saved_figures[tmp_path / "one.png"])
    assert len(axes) == 2 and axes[0].get_title().endswith("(1 run)")
    for ax, variable in zip(axes, "NC"):
        assert not _law_lines(ax, variable)
        assert "no fit: a scaling fit needs at least two sizes" in legend_texts(ax)
    assert len(_curves(axes[1])) == 1
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

    from astropt.probe import _spearman

    rho, p = _spearman(np.arange(4.0), np.array([1.0, 2.0, 4.0, 3.0]))
    ref = stats.spearmanr(np.arange(4.0), [1.0, 2.0, 4.0, 3.0])
    assert rho == pytest.approx(ref.statistic)
    assert p == pytest.approx(8 / 24)  # orderings with |rho| >= 0.8, of 4!
    x, y = np.arange(12.0), np.array([1, 3, 2, 5, 4, 6, 8, 7, 9, 11, 10, 12.0])
    assert _spearman(x, y) == pytest.approx(tuple(stats.spearmanr(x, y)))  # 12 sizes: scipy's p
    assert np.isnan(_spearman(np.arange(3.0), np.array([1.0, np.nan, np.nan]))[0])


def _property_lines(ax):
    """{property: its errorbar container} of a downstream panel, from the legend labels."""
    return {c.get_label().split(" (")[0]: c for c in ax.containers}


def test_plot_downstream_draws_one_line_per_property_and_panel(tmp_path, saved_figures, probes):
    summary = downstream_table(probes)
    out = tmp_path / "sub" / "downstream.png"
    plot_downstream(summary, out)  # three panels, parent created
    fig = saved_figures[out]
    axes = panels(fig)
    assert len(fig.axes) == 3
    want = [("paper", "median_abs_error", "paper protocol (linear regression, held-out half): median absolute error",
             "lower is better"),
            ("ridge_cv", "r2", "ridge regression (k-fold cross-validation): R²", "higher is better"),
            ("logistic_cv", "roc_auc", "logistic regression of flags (k-fold cross-validation): ROC AUC",
             "higher is better")]
    colours = {}
    for ax, (protocol, metric, title, direction) in zip(axes, want):
        rows = summary[(summary["protocol"] == protocol) & (summary["metric"] == metric)]
        assert ax.get_title() == title
        assert ax.get_ylabel().endswith(f"relative to smallest model\n({direction})")
        assert ax.get_xlabel() == "model size (parameters)" and ax.get_xscale() == "log"
        # the sizes on the x axis, by parameters, named
        sizes = rows.drop_duplicates("size").sort_values("params")
        assert list(ax.get_xticks()) == sizes["params"].tolist()
        assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == sizes["size"].tolist()
        # the reference: the smallest model's score, 1
        assert [list(line.get_ydata()) for line in ax.get_lines() if line.get_linestyle() == "--"] == [[1.0, 1.0]]
        lines = _property_lines(ax)
        assert set(lines) == set(rows["property"])  # one line per property probed so
        assert [c.get_label() for c in ax.containers] == legend_texts(ax)
        for prop, grp in rows.groupby("property"):
            container = lines[prop]
            grp = grp.sort_values("params")
            np.testing.assert_allclose(xy(container.lines[0]), grp[["params", "relative"]].to_numpy(dtype=float))
            rho = grp["spearman_rho"].iloc[0]
            label = container.get_label()
            if np.isfinite(rho):
                assert shown_number(label, "ρ")[0] == pytest.approx(round(rho, 2))
                assert shown_number(label, "p")[0] == pytest.approx(float(f"{grp['spearman_p'].iloc[0]:.2g}"))
            else:
                assert label == f"{prop} (ρ n/a)"
            assert not container.lines[2]  # one run per size: no error bars
            colour = container.lines[0].get_color()
            assert colours.setdefault(prop, colour) == colour  # a property keeps its colour across panels
    assert len(set(map(str, colours.values()))) == len(colours)  # and no two share one
    assert legend_texts(axes[0]) == ["flat (ρ n/a)", "redshift (ρ = -1.00, p = 0.33)",
                                     "smooth (ρ = +1.00, p = 0.33)"]

    plot_downstream(summary, tmp_path / "paper_only.png", panels=[("paper", "median_abs_error")])
    (ax,) = saved_figures[tmp_path / "paper_only.png"].axes
    assert ax.get_title() == want[0][2] and set(_property_lines(ax)) == {"redshift", "smooth", "flat"}
    with pytest.raises(ValueError, match="none of the panels"):
        plot_downstream(summary, tmp_path / "none.png", panels=[("ridge_cv", "accuracy")])
    assert tmp_path / "none.png" not in saved_figures


def test_plot_downstream_of_several_runs_draws_their_spread(tmp_path, saved_figures, probes):
    runs = [probes.assign(seed=0), probes.assign(seed=1, value=probes["value"] * 1.1)]
    summary = downstream_table(pd.concat(runs))
    plot_downstream(summary, tmp_path / "downstream.png", panels=[("ridge_cv", "r2")])
    (ax,) = saved_figures[tmp_path / "downstream.png"].axes
    assert ax.get_ylabel().endswith("; mean of runs ± sd")
    rows = summary[(summary["protocol"] == "ridge_cv") & (summary["metric"] == "r2")]
    lines = _property_lines(ax)
    assert set(lines) == set(rows["property"])
    for prop, container in lines.items():
        grp = rows[rows["property"] == prop].sort_values("params")
        x, y = xy(container.lines[0]).T
        np.testing.assert_allclose(x, grp["params"], rtol=0.02)  # nudged apart by at most 2 %
        np.testing.assert_allclose(y, grp["relative"])
        assert "100% of seeds agree" in container.get_label()
        if grp["relative"].isna().all():  # relative to an R^2 < 0: nothing to draw
            continue
        (bars,) = container.lines[2]  # each size's mean ± the sd over its runs
        spans = np.array([sorted(seg[:, 1]) for seg in bars.get_segments()])
        sd = grp["relative_sd"].to_numpy()
        np.testing.assert_allclose(spans, np.column_stack([y - sd, y + sd]))


def test_plot_umap_draws_a_hexbin_panel_per_property(tmp_path, saved_figures):
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
    fig = saved_figures[tmp_path / "umap.png"]
    assert fig.get_suptitle() == "test"
    grid = [ax for ax in fig.axes if not is_colorbar(ax)]
    assert len(grid) == 8 and [ax.get_visible() for ax in grid] == [True] * 5 + [False] * 3  # 4 across, 2 down
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == list(values.columns)
    assert grid[4].get_xlabel() == "UMAP 1" and not grid[0].get_xlabel()  # on the bottom row
    assert grid[0].get_ylabel() == grid[4].get_ylabel() == "UMAP 2" and not grid[1].get_ylabel()
    bars = colorbars(fig)
    assert len(bars) == 4  # one per property with values; none for "c"
    hex_width = np.ptp(coords[:, 0]) * 1.06 / 15
    for ax, name in zip(axes, values.columns):
        c = values[name].to_numpy(dtype=float)
        ok = np.isfinite(c)
        hexbins = [col for col in ax.collections if isinstance(col, PolyCollection)]
        if not ok.any():
            assert not hexbins and [t.get_text() for t in ax.texts] == ["no finite values"]
            continue
        under, coloured = hexbins
        assert under.get_array().sum() == len(coords)  # the grey underlay counts every galaxy
        # the colour: the property's median in each hexagon, on a scale of its 2-98th percentiles
        (bar,) = [b for b in bars if b.mappable is coloured]
        assert (bar.vmin, bar.vmax) == pytest.approx(tuple(np.percentile(c[ok], [2, 98])))
        medians = np.asarray(coloured.get_array())
        assert len(medians) <= len(under.get_array()) and medians.min() >= c[ok].min() and medians.max() <= c[ok].max()
        dropped = [t.get_text() for t in ax.texts]
        assert dropped == ([f"{(~ok).sum()} NaN dropped"] if (~ok).any() else [])
        if name == "a":  # a = UMAP 1: each hexagon's median sits at its centre's x
            assert len(medians) == len(under.get_array())
            centres = coloured.get_offsets()[:, 0]
            assert np.abs(medians - centres).max() < hex_width
    plot_umap(coords, values[["a"]], tmp_path / "umap1.png")
    fig = saved_figures[tmp_path / "umap1.png"]
    assert len(panels(fig)) == 1 and len(colorbars(fig)) == 1 and fig.get_suptitle() == ""
    with pytest.raises(ValueError, match="rows"):
        plot_umap(coords[:10], values, tmp_path / "bad.png")


def test_plot_loss_curves_draws_every_run_in_its_sizes_colour(tmp_path, saved_figures):
    metrics = {}
    for name, floor in (("0.04M/seed0", 0.2), ("0.04M/seed1", 0.21), ("2M/seed0", 0.18)):
        step = np.arange(0, 201, 10)
        val = np.where(step % 50 == 0, floor + 0.2 * np.exp(-step / 50), np.nan)
        metrics[name] = pd.DataFrame(
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
    fig = saved_figures[tmp_path / "loss.png"]
    ax_tr, ax_va = panels(fig)
    assert len(fig.axes) == 2
    assert (ax_tr.get_title(), ax_va.get_title()) == ("training loss", "validation loss")
    assert ax_tr.get_xlabel() == ax_va.get_xlabel() == "tokens seen" and ax_tr.get_ylabel() == "Huber loss"
    for ax, column in ((ax_tr, "train_loss"), (ax_va, "val_loss")):
        lines = data_lines(ax)
        assert len(lines) == len(metrics)  # one line per run
        for line, df in zip(lines, metrics.values()):
            ok = df[np.isfinite(df[column]) & (df["tokens_seen"] > 0)]  # log axes: step 0 left out
            np.testing.assert_allclose(xy(line), ok[["tokens_seen", column]].to_numpy(dtype=float))
        colours = [line.get_color() for line in lines]
        assert colours[0] == colours[1] != colours[2]  # a size's runs share its colour
    assert len(data_lines(ax_va)[0].get_xdata()) == 4  # evaluated every 50 steps
    assert legend_texts(ax_va) == ["0.04M (2 runs)", "2M"]
    assert ax_va.get_legend().get_title().get_text() == "model size"


def test_plot_examples_draws_the_stamps_with_their_truths(tmp_path, saved_figures):
    from PIL import Image

    from astropt.synthetic import SyntheticConfig, generate

    meta = generate(tmp_path / "syn", SyntheticConfig(n_train=5, n_val=1, n_test=0), log=lambda _: None)

    def png(pos):  # 8-bit RGB stamps, shown as they are
        with Image.open(tmp_path / "syn" / meta["image_path"].iloc[pos]) as im:
            return np.asarray(im.convert("RGB"))

    out = tmp_path / "sub" / "examples.png"
    plot_examples(png, meta, out, n=16, seed=1)  # n above the table: all 6 shown
    fig = saved_figures[out]
    assert len(fig.axes) == 6 and not any(ax.axison for ax in fig.axes)  # 3 x 2, no axes drawn
    for ax, row in zip(fig.axes, meta.itertuples()):
        (image,) = ax.get_images()
        with Image.open(tmp_path / "syn" / row.image_path) as im:
            np.testing.assert_array_equal(image.get_array(), np.asarray(im.convert("RGB")))
        title = ax.get_title()
        assert title.split("\n")[0] == row.id
        caption = " ".join(title.split("\n")[1:]).replace("\u00a0", " ")
        assert f"r {row.mag_r_desi:.2f}" in caption and f"zred {row.redshift:.2f}" in caption
        assert f"r50 {row.est_petro_th50:.2f}" in caption
    # fewer than the table: drawn without replacement, shown in table order
    plot_examples(png, meta, tmp_path / "four.png", n=4, seed=1, columns=("mass_med_photoz",))
    axes = saved_figures[tmp_path / "four.png"].axes
    assert len(axes) == 4
    ids = [ax.get_title().split("\n")[0] for ax in axes]
    positions = [meta["id"].tolist().index(i) for i in ids]
    assert positions == sorted(set(positions))
    for ax, pos in zip(axes, positions):
        assert ax.get_title().split("\n")[1] == f"logM\u00a0{meta['mass_med_photoz'].iloc[pos]:.2f}"
    # a callable gives each stamp (float, one band): drawn grey, scaled per stamp
    stamps = np.random.default_rng(0).lognormal(0, 1, (len(meta), 8, 8, 1)).astype(np.float32)
    plot_examples(lambda pos: stamps[pos], meta, tmp_path / "float.png", n=2, seed=0, columns=())
    axes = saved_figures[tmp_path / "float.png"].axes
    assert len(axes) == 2
    for ax in axes:
        (image,) = ax.get_images()
        pos = meta["id"].tolist().index(ax.get_title().strip())
        shown = np.asarray(image.get_array())
        assert shown.shape == (8, 8) and image.get_cmap().name == "gray" and 0 <= shown.min() < shown.max() <= 1
        order = np.argsort(stamps[pos, ..., 0], axis=None)
        assert (np.diff(shown.ravel()[order]) >= -1e-7).all()  # its own stamp: brighter stays brighter
    with pytest.raises(ValueError, match="no_such_column"):
        plot_examples(png, meta, tmp_path / "x.png", columns=("no_such_column",))


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
