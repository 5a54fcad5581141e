"""Tests of the N x D grid figures (astropt.figures): IsoFLOP profiles, the compute-optimal
frontier and loss against tokens, checked on what they draw (line data, markers, legends,
notes, colour bars), not only on the PNG; the public plot_* functions on the figure they write.

Run: python -m pytest tests/test_figures_grid.py -q
"""

import math

import numpy as np
import pandas as pd
import pytest

from astropt.chinchilla import compute_optimal, fit_grid, optimal_allocation, predict
from astropt.figures import (
    _draw_frontier,
    _draw_isoflop,
    _draw_loss_tokens,
    plot_frontier,
    plot_isoflop,
    plot_loss_tokens,
)
from figure_helpers import colorbars, panels, saved_figures  # noqa: F401 (saved_figures: a fixture)

# A law of AstroPT's range (N 42K to 2M, D 1.6M to 26M), both terms of a few per cent of E.
TRUTH = {"E": 0.15, "A": 2.5, "B": 3.75, "alpha": 0.34, "beta": 0.28}
SIZES = {"42K": 42_496, "144K": 144_192, "416K": 416_000, "2M": 2_030_000}
BUDGETS = {"D1.6M": 1.6e6, "D6.4M": 6.4e6, "D25.6M": 25.6e6}
HELD = ("2M", "D25.6M")  # the corner held out: largest model, most tokens


def _table(budgets=BUDGETS, seeds=2, sd=0.004, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    rows = [{"size": s, "seed": k, "budget": b, "params": n, "tokens_seen": d, "flops": 6.0 * n * d,
             "val_loss": float(predict(TRUTH, n, d)) * math.exp(sd * rng.standard_normal())}
            for s, n in SIZES.items() for b, d in budgets.items() for k in range(seeds)]
    return pd.DataFrame(rows)


def _level(C, N):
    """An IsoFLOP level of the true law: its points, the parabola of ln L in ln N, the minimum."""
    N = np.asarray(N, dtype=float)
    D = C / (6 * N)
    L = predict(TRUTH, N, D)
    c2, c1, c0 = np.polyfit(np.log(N), np.log(L), 2)
    x = -c1 / (2 * c2)
    level = {"C": C, "N": N.tolist(), "D": D.tolist(), "L": L.tolist(), "parabola": [c2, c1, c0],
             "N_opt": None, "L_opt": None, "N_opt_ci": None, "D_opt": None, "unbracketed_share": None, "reason": None}
    if c2 > 0 and np.log(N.min()) < x < np.log(N.max()):
        n_opt = math.exp(x)
        level.update(N_opt=n_opt, L_opt=math.exp(c2 * x * x + c1 * x + c0), N_opt_ci=[n_opt / 1.3, n_opt * 1.4],
                     D_opt=C / (6 * n_opt), unbracketed_share=0.05)
    else:
        level["reason"] = "profile has no minimum inside the sizes: loss still falls with N up to the largest"
    return level


@pytest.fixture(scope="module")
def table():
    return _table()


@pytest.fixture(scope="module")
def grid(table):
    return _grid(table)


def _grid(table):
    """The grid rule's dict, by hand: approach 3 as fit_grid gives it (the true law, with
    intervals), its frontier, three IsoFLOP levels of the true law and the held-out corner."""
    p = np.array([math.log(TRUTH["A"]), math.log(TRUTH["B"]), math.log(TRUTH["E"]), TRUTH["alpha"], TRUTH["beta"]])
    a, b, G = compute_optimal(p)
    a3 = {**TRUTH, "a": a, "b": b, "G": G, "unidentified": {}, "n_boot": 200, "ci_level": 0.95}
    for name, value in list(a3.items())[:8]:
        a3[f"{name}_ci"] = [value * 0.9, value * 1.1]
    C = np.geomspace(1e11, 1e15, 25)
    n_opt, d_opt = optimal_allocation(a3, C)
    a3["frontier"] = {"C": C.tolist(), "N_opt": n_opt.tolist(), "N_lo": (n_opt / 1.2).tolist(),
                      "N_hi": (n_opt * 1.2).tolist(), "D_opt": d_opt.tolist(), "D_lo": (d_opt / 1.2).tolist(),
                      "D_hi": (d_opt * 1.2).tolist()}
    levels = [_level(C, np.geomspace(2e4, 3e6, 7)) for C in (1e12, 1e13)]
    levels.append(_level(1e16, np.geomspace(2e4, 3e6, 7)))  # its minimum is past 3M parameters
    assert [lv["N_opt"] is not None for lv in levels] == [True, True, False]
    isoflop = {"levels": levels, "a": 0.52, "a_ci": [0.44, 0.61], "b": 0.48, "b_ci": [0.39, 0.56], "n_levels": 3,
               "n_bracketed": 2, "reason": None}
    n, d = SIZES[HELD[0]], BUDGETS[HELD[1]]
    held = table[(table["size"] == HELD[0]) & (table["budget"] == HELD[1])]["val_loss"]
    observed = float(np.exp(np.log(held).mean()))
    predicted = float(predict(a3, n, d))
    holdout = {"N": n, "D": d, "C": 6 * n * d, "cell": f"{HELD[0]}/{HELD[1]}", "n_runs": len(held),
               "observed": observed, "runs": held.tolist(), "predicted": predicted,
               "pi": [predicted * 0.97, predicted * 1.03], "ci_level": 0.95,
               "verdict": "inside the 95 % prediction interval: PASSED", "reason": None}
    return {"approach3": a3, "isoflop": isoflop, "holdout": holdout}


def _gid(ax, gid):
    return [a for a in ax.get_children() if a.get_gid() == gid]


def _legend(ax):
    return " ".join(" ".join(t.get_text().split()) for t in ax.get_legend().get_texts())


def _texts(ax):
    return " ".join(" ".join(t.get_text().split()) for t in ax.texts)


def test_isoflop_parabolas_minima_and_both_exponents(table, grid):
    fig = _draw_isoflop(table, grid)
    ax = fig.axes[0]
    assert len(fig.axes) == 2 and "FLOPs" in fig.axes[1].get_ylabel()  # the colourbar of C
    (bar,) = colorbars(fig)
    assert (bar.vmin, bar.vmax) == pytest.approx((1e12, 1e16))  # the levels' compute, lowest to highest
    assert ax.get_title() == f"IsoFLOP profiles (approach 2): loss vs model size at fixed compute ({len(table)} runs)"
    assert ax.get_xlabel() == "parameters N (excluding position embedding)" and ax.get_xscale() == "log"
    levels = grid["isoflop"]["levels"]
    for i, lv in enumerate(levels[:2]):
        (line,) = _gid(ax, f"parabola:{i}")
        x, y = line.get_xdata(), line.get_ydata()
        assert x.min() == pytest.approx(min(lv["N"])) and x.max() == pytest.approx(max(lv["N"]))
        assert x[np.argmin(y)] == pytest.approx(lv["N_opt"], rel=1e-9)  # the parabola's lowest point is N_opt
        assert line.get_linestyle() == "-"
        (star,) = _gid(ax, f"minimum:{i}")
        assert star.get_xdata()[0] == pytest.approx(lv["N_opt"]) and star.get_ydata()[0] == pytest.approx(lv["L_opt"])
        (bar,) = _gid(ax, f"minimum_ci:{i}")
        (seg,) = bar.get_segments()
        assert sorted(seg[:, 0]) == pytest.approx(lv["N_opt_ci"])  # N_opt's interval, horizontal
        (points,) = _gid(ax, f"points:{i}")
        assert np.allclose(points.get_ydata(), lv["L"])
        # the levels are coloured by their compute: different colours
    assert _gid(ax, "parabola:0")[0].get_color() != _gid(ax, "parabola:1")[0].get_color()
    # the level without a minimum: dashed, no star, its reason noted
    (line,) = _gid(ax, "parabola:2")
    assert line.get_linestyle() == "--" and not _gid(ax, "minimum:2")
    legend = _legend(ax)
    assert "C = $1{\\times}10^{16}$: profile has no minimum inside the sizes: loss still falls" in legend
    assert "$N_{opt}$ = 84.2k [64.8k, 118k]; minimum outside the sizes in 5 % of resamples" in legend
    assert "approach 2 (IsoFLOP minima)" in legend and "a = 0.520 [0.440, 0.610]" in legend
    a3 = grid["approach3"]
    lo, hi = a3["a_ci"]
    assert f"approach 3 (fit of L(N, D)): a = {a3['a']:.3f} [{lo:.3f}, {hi:.3f}]" in legend


def test_frontier_lines_minima_and_runs(table, grid):
    fig = _draw_frontier(table, grid)
    ax_n, ax_d = fig.axes
    a3 = grid["approach3"]
    assert (ax_n.get_title(), ax_d.get_title()) == ("Compute-optimal parameters vs compute",
                                                    "Compute-optimal tokens vs compute")
    assert ax_n.get_xlabel() == ax_d.get_xlabel() == "compute C = 6ND (FLOPs)"
    assert ax_n.get_ylabel() == "compute-optimal parameters $N_{opt}$"
    for ax, key, k in ((ax_n, "N", 0), (ax_d, "D", 1)):
        (line,) = _gid(ax, f"approach3:{key}")
        C = line.get_xdata()
        assert np.allclose(line.get_ydata(), optimal_allocation(a3, C)[k], rtol=1e-12)
        assert len(_gid(ax, f"approach3_band:{key}")) == 1
        (runs,) = _gid(ax, f"runs:{key}")
        offsets = runs.get_offsets()
        assert len(offsets) == len(table)
        assert np.allclose(offsets[:, 0], 6 * table["params"] * table["tokens_seen"])
        assert np.allclose(offsets[:, 1], table["params" if key == "N" else "tokens_seen"])
        (minima,) = _gid(ax, f"approach2:{key}")
        bracketed = [lv for lv in grid["isoflop"]["levels"] if lv["N_opt"] is not None]
        assert np.allclose(minima.get_xdata(), [lv["C"] for lv in bracketed])
        want = [lv["N_opt"] if key == "N" else lv["C"] / (6 * lv["N_opt"]) for lv in bracketed]
        assert np.allclose(minima.get_ydata(), want)
        (fit2,) = _gid(ax, f"approach2_fit:{key}")
        slope = np.diff(np.log(fit2.get_ydata()))[0] / np.diff(np.log(fit2.get_xdata()))[0]
        assert slope == pytest.approx(grid["isoflop"]["a" if key == "N" else "b"])
    assert "a = 0.520 [0.440, 0.610]" in _legend(ax_n) and "b = 0.480 [0.390, 0.560]" in _legend(ax_d)
    assert "approach 3 (fit of L(N, D))" in _legend(ax_n) and not ax_n.texts

    # without the frontier in the dict the line comes from a, b, G, still optimal_allocation's
    no_front = {**grid, "approach3": {**a3, "frontier": None}}
    ax_n = _draw_frontier(table, no_front).axes[0]
    (line,) = _gid(ax_n, "approach3:N")
    assert np.allclose(line.get_ydata(), optimal_allocation(a3, line.get_xdata())[0], rtol=1e-12)
    assert not _gid(ax_n, "approach3_band:N")
    # fit_grid's frontier without resamples (no band) and with ends the replicates could not give
    front = a3["frontier"]
    bare = {**front, "N_lo": None, "N_hi": None, "D_lo": None, "D_hi": None}
    ax_n = _draw_frontier(table, {**grid, "approach3": {**a3, "frontier": bare}}).axes[0]
    assert len(_gid(ax_n, "approach3:N")) == 1 and not _gid(ax_n, "approach3_band:N")
    holes = {**front, "N_lo": [None, *front["N_lo"][1:]], "D_hi": [None, *front["D_hi"][1:]]}
    ax_n, ax_d = _draw_frontier(table, {**grid, "approach3": {**a3, "frontier": holes}}).axes
    assert len(_gid(ax_n, "approach3_band:N")) == 1 and len(_gid(ax_d, "approach3_band:D")) == 1


def test_loss_tokens_curves_cells_and_the_held_out_corner(table, grid):
    fig = _draw_loss_tokens(table, grid)
    ax = fig.axes[0]
    a3 = grid["approach3"]
    curves = [a for a in ax.get_lines() if str(a.get_gid()).startswith("approach3:")]
    assert len(curves) == len(SIZES)
    for size, n in SIZES.items():
        (line,) = _gid(ax, f"approach3:{size}")
        assert np.allclose(line.get_ydata(), predict(a3, n, line.get_xdata()))
        (means,) = _gid(ax, f"means:{size}")
        cells = len(BUDGETS) - (size == HELD[0])  # the held-out cell is not among the means
        assert len(means.get_xdata()) == cells
    (dots,) = _gid(ax, "runs")
    assert len(dots.get_offsets()) == len(table) - 2
    h = grid["holdout"]
    (held,) = _gid(ax, "holdout:observed")
    assert held.get_xdata()[0] == h["D"] and held.get_ydata()[0] == pytest.approx(h["observed"])
    assert held.get_markerfacecolor() == "none"  # open
    (held_runs,) = _gid(ax, "holdout:runs")
    assert sorted(held_runs.get_offsets()[:, 1]) == pytest.approx(sorted(h["runs"]))
    (pred,) = _gid(ax, "holdout:predicted")
    assert pred.get_ydata()[0] == pytest.approx(h["predicted"])
    assert ax.get_title() == f"Final validation loss vs training tokens, per model size ({len(table)} runs)"
    assert ax.get_xlabel() == "training tokens D (tokens seen)" and ax.get_ylabel() == "validation loss"
    sizes = [t.get_text() for t in ax.get_legend().get_texts()][: len(SIZES)]
    assert sizes == ["42K (N = 42.5k)", "144K (N = 144k)", "416K (N = 416k)", "2M (N = 2.03M)"]
    legend = _legend(ax)
    assert "verdict: inside the 95 % prediction interval: PASSED" in legend
    assert "held-out corner 2M/D25.6M" in legend and "95 % prediction interval" in legend


def test_public_functions_write_what_they_draw(tmp_path, saved_figures, table, grid):
    for plot in (plot_isoflop, plot_frontier, plot_loss_tokens):
        assert plot(table, grid, tmp_path / "sub" / f"{plot.__name__}.png") is None  # parent created
    fig = saved_figures[tmp_path / "sub" / "plot_isoflop.png"]
    (ax,) = panels(fig)
    assert len(colorbars(fig)) == 1 and ax.get_title().startswith("IsoFLOP profiles")
    assert sorted(str(a.get_gid()) for a in ax.get_lines() if str(a.get_gid()).startswith("parabola:")) == \
        ["parabola:0", "parabola:1", "parabola:2"]
    ax_n, ax_d = panels(saved_figures[tmp_path / "sub" / "plot_frontier.png"])
    for ax, key, column in ((ax_n, "N", "params"), (ax_d, "D", "tokens_seen")):
        (runs,) = _gid(ax, f"runs:{key}")
        assert np.allclose(runs.get_offsets()[:, 1], table[column])
        assert len(_gid(ax, f"approach3:{key}")) == len(_gid(ax, f"approach2:{key}")) == 1
    (ax,) = panels(saved_figures[tmp_path / "sub" / "plot_loss_tokens.png"])
    assert len(_gid(ax, "runs")[0].get_offsets()) == len(table) - 2  # the held-out corner's two apart
    assert len(_gid(ax, "holdout:observed")) == 1 and len(_gid(ax, "holdout:predicted")) == 1
    assert len([a for a in ax.get_lines() if str(a.get_gid()).startswith("approach3:")]) == len(SIZES)


def test_one_budget_says_what_it_cannot_tell(tmp_path, saved_figures):
    """One token budget: beta and the allocation are not identified, no IsoFLOP levels, no
    held-out test. Each panel says so; nothing crashes."""
    table = _table(budgets={"D6.4M": 6.4e6}, seeds=2)
    a3 = fit_grid(table["params"], table["tokens_seen"], table["val_loss"], n_boot=0)
    assert a3["beta"] is None and a3["a"] is None
    a3["frontier"] = None
    grid = {"approach3": a3,
            "isoflop": {"reason": "every run saw 6.4M tokens: no two runs share a compute level"},
            "holdout": {"reason": "grid.holdout is null: no corner held out"}}
    why = a3["unidentified"]["a"]
    for ax in _draw_frontier(table, grid).axes:
        assert not [a for a in ax.get_children() if str(a.get_gid()).startswith(("approach3", "approach2"))]
        text = _texts(ax)
        assert "approach 3 (fit of L(N, D)), no frontier: " in text and " ".join(why.split()) in text
        assert "every run saw 6.4M tokens" in text
        assert len(_gid(ax, "runs:N") + _gid(ax, "runs:D")) == 1  # the runs are still drawn
    ax = _draw_isoflop(table, grid).axes[0]
    assert "approach 2 (IsoFLOP profiles): every run saw 6.4M tokens" in _texts(ax)
    ax = _draw_loss_tokens(table, grid).axes[0]
    assert not [a for a in ax.get_lines() if str(a.get_gid()).startswith("approach3:")]
    text = _texts(ax)
    assert "approach 3 (fit of L(N, D)) not drawn: E, B, beta not identified (the grid has one token budget" in text
    assert "held-out corner: grid.holdout is null" in text
    assert len(_gid(ax, "runs")[0].get_offsets()) == len(table)
    for plot in (plot_isoflop, plot_frontier, plot_loss_tokens):  # the public functions draw the same
        plot(table, grid, tmp_path / f"{plot.__name__}.png")
        fig = saved_figures[tmp_path / f"{plot.__name__}.png"]
        assert all("every run saw 6.4M tokens" in _texts(ax) or "held-out corner: grid.holdout is null" in _texts(ax)
                   for ax in panels(fig))
    # no grid at all (figure_grid's stand-in): the runs are drawn, and the reason in each panel
    bare = {"reason": "train.budgets lists one budget: there is no N x D grid"}
    text = _texts(_draw_isoflop(table, bare).axes[0])
    assert "approach 2 (IsoFLOP profiles): train.budgets lists one budget" in text
    for ax in _draw_frontier(table, bare).axes:
        assert "approach 3 (fit of L(N, D)), no frontier: no fit (train.budgets lists one budget" in _texts(ax)
        assert len(ax.collections) == 1  # the runs alone
    ax = _draw_loss_tokens(table, bare).axes[0]
    text = _texts(ax)
    assert "not drawn: no fit (train.budgets" in text and "held-out corner: train.budgets lists one budget" in text
    assert len(_gid(ax, "runs")[0].get_offsets()) == len(table)
