"""Figures of the AstroPT scaling study: loss scaling, downstream probes, UMAP.

Each ``plot_*`` function writes one PNG (parent folders created) and returns
nothing. Figures are built as ``matplotlib.figure.Figure`` objects rendered by the
Agg canvas: no display, no pyplot global state, nothing left open.

- :func:`plot_scaling`: final validation loss vs parameters and vs training compute
  with the saturating and plain power-law fits, and the validation curves against
  FLOPs (the paper's scaling figure).
- :func:`plot_downstream`: each model's probe score relative to the smallest
  model, with Spearman's rho between size and score (the paper's downstream figure),
  from the summary table of :func:`astropt.probe.downstream_table`.
- :func:`plot_umap`: hexbin panels of a 2-D UMAP of embeddings, coloured by the
  median of each property (the paper's UMAP figure).
- :func:`plot_loss_curves`: train / validation loss against tokens seen, per size.
- :func:`plot_isoflop`, :func:`plot_frontier`, :func:`plot_loss_tokens`: the N x D grid
  (:mod:`astropt.chinchilla`): IsoFLOP profiles (Chinchilla's approach 2), the
  compute-optimal N and D against compute (approaches 2 and 3), and the loss against
  tokens per size with approach 3's fitted law and the held-out corner.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from astropt.io import runs_text
from astropt.runs import run_name


DPI = 150


def _save(fig: Figure, out: str | os.PathLike) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, bbox_inches="tight")
    fig.clear()


def _require(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; it has {list(df.columns)}")


def _human(n: float) -> str:
    """A parameter count as a short string: 1.1M, 42k, 2.1B."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def _fmt_err(value: float | None, err: float | None) -> str:
    """``value ± err`` with the error to 2 significant figures and the value to match."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if err is None or not math.isfinite(err) or err <= 0:
        return f"{value:.3g}"
    decimals = max(0, 1 - math.floor(math.log10(err)))
    if decimals > 8:
        return f"{value:.3g} ± {err:.2g}"
    return f"{value:.{decimals}f} ± {err:.{decimals}f}"


def _plain_log_axis(axis) -> None:
    """Label a log axis with plain numbers; label minor ticks too on narrow ranges."""
    lo, hi = axis.get_view_interval()
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    axis.set_major_formatter(plain)
    axis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10) * 1.0))
    if hi / lo < 3:  # well under a decade: every minor tick gets a label
        axis.set_minor_formatter(plain)
    elif hi / lo < 30:  # about a decade: label 2x, 3x and 5x only
        axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.3g}" if _mantissa(v) in (2, 3, 5) else ""))
    else:
        axis.set_minor_formatter(NullFormatter())


def _mantissa(v: float) -> int:
    """The leading digit of ``v`` (2 for 200, 5 for 0.05)."""
    return round(v / 10 ** math.floor(math.log10(v) + 1e-9))


def _scaling_fits(table: pd.DataFrame, fit: Mapping | None) -> dict[str, Mapping | None]:
    """The fits against parameters ("N") and compute ("C") from ``fit`` in any of its forms:
    ``fit.json`` of the scaling rule, one :func:`astropt.scaling.fit_scaling_laws` result, or
    ``None``; a variable without a fit is fitted here from ``table``."""
    from astropt.scaling import fit_scaling_laws

    if fit is not None and ("params" in fit or "compute" in fit):
        return {"N": fit.get("params"), "C": fit.get("compute")}
    fits = {} if fit is None else {fit.get("variable", "N"): fit}
    for variable, column in (("N", "params"), ("C", "flops")):
        if variable not in fits and column in table.columns and table[column].nunique() > 1:
            fits[variable] = fit_scaling_laws(table[column], table["val_loss"], variable=variable)
    return fits


def _ci_text(params: Mapping, key: str, boot: bool = False) -> str:
    """`` [lo, hi]`` of a fitted parameter at the decimals of its error; ``†`` marks a bound.
    ``boot``: its bootstrap interval over runs (``{key}_boot_ci``) instead of the analytic one."""
    ci = params.get(f"{key}_boot_ci" if boot else f"{key}_ci")
    value, err = params.get(key), params.get(f"{key}_err")
    if not ci or None in ci or value is None:
        return ""
    if err is None or not math.isfinite(err) or err <= 0:
        err = (ci[1] - ci[0]) / 4 if ci[1] > ci[0] else abs(value) / 10 or 1.0
    d = max(0, min(8, 1 - math.floor(math.log10(err))))
    opened = (params.get("boot_open" if boot else "ci_open") or {}).get(key, [False, False])
    ends = [f"{e:.{d}f}" + ("†" if o else "") for e, o in zip(ci, opened)]
    return f" [{ends[0]}, {ends[1]}]"


def _law_label(fit: Mapping, law: str, variable: str) -> str | None:
    """Legend label of one fitted law: its exponent (and floor) with the analytic interval and,
    when there is one, the bootstrap interval over runs (None: nothing to draw)."""
    p = fit.get(law) or {}
    X = variable
    if p.get("alpha") is None or (law == "saturating" and p.get("L_inf") is None):
        return None
    if law == "power_law" and p.get(f"log10_{X}_c") is None:
        return None

    def value(key: str) -> str:
        text = f"{_fmt_err(p[key], p.get(f'{key}_err'))}{_ci_text(p, key)}"
        boot = _ci_text(p, key, boot=True)
        return text + (f", bootstrap{boot}" if boot else "")

    formula = f"$L_\\infty + ({X}_c/{X})^\\alpha$" if law == "saturating" else f"$({X}_c/{X})^\\alpha$"
    label = f"{formula}: α = {value('alpha')}"
    if law == "saturating":
        label += f"\n    $L_\\infty$ = {value('L_inf')}"
    if fit.get("preferred") == law:
        label += "  (preferred)"
    if p.get("degenerate"):
        label += "\n" + textwrap.fill(f"DEGENERATE: {p.get('reason', '')}", 58, subsequent_indent="    ")
    return label


def _size_means(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per size: X, the geometric mean loss of its runs and their spread (sd of log L)."""
    logs = table.assign(logL=np.log(table["val_loss"].astype(float)))
    agg = logs.groupby("size", sort=False).agg(X=(column, "first"), mean=("logL", "mean"), sd=("logL", "std"),
                                               runs=("logL", "size"))
    agg["L"] = np.exp(agg["mean"])
    agg["lo"], agg["hi"] = np.exp(agg["mean"] - agg["sd"].fillna(0)), np.exp(agg["mean"] + agg["sd"].fillna(0))
    return agg.reset_index()


def _draw_runs(ax, table: pd.DataFrame, column: str, colours: dict) -> pd.DataFrame:
    """Every run as a small point and each size's mean with its between-run spread."""
    X = table[column].to_numpy(dtype=float)
    L = table["val_loss"].to_numpy(dtype=float)
    several = table.groupby("size")["val_loss"].size().max() > 1
    ax.scatter(X, L, s=14 if several else 44, c=[colours[s] for s in table["size"]],
               edgecolors="black" if not several else "none", linewidths=0.8, alpha=0.75 if several else 1.0,
               zorder=4)
    means = _size_means(table, column)
    if several:
        for r in means.itertuples():
            ax.errorbar(r.X, r.L, yerr=[[r.L - r.lo], [r.hi - r.L]], fmt="o", ms=7, mfc=colours[r.size],
                        mec="black", ecolor="black", elinewidth=1.2, capsize=4, zorder=5)
        ax.plot([], [], ls="", marker=".", ms=6, color="0.4", label="final validation loss of one run")
        ax.errorbar([], [], yerr=[], fmt="o", ms=6, mfc="white", mec="black", ecolor="black", capsize=3,
                    label="size mean (geometric) ± between-run sd")
    else:
        ax.plot([], [], ls="", marker="o", ms=6, mfc="white", mec="black", label="final validation loss of a size")
    return means


def _scaling_panel(
    ax,
    table: pd.DataFrame,
    column: str,
    variable: str,
    fit: Mapping | None,
    colours: dict,
    curves: Mapping[str, pd.DataFrame] | None = None,
) -> None:
    """One panel of :func:`plot_scaling`: every run's final loss against ``column``, each
    size's mean and spread, the fitted laws with their bootstrap band, and (compute panel)
    each run's validation curve."""
    from astropt.scaling import predict  # here: scaling imports scipy.stats (about 1.5 s)

    ax.set_xscale("log")
    ax.set_yscale("log")
    X = table[column].to_numpy(dtype=float)
    L = table["val_loss"].to_numpy(dtype=float)
    for name, df in (curves or {}).items():
        size = str(name).split("/")[0]
        _require(df, ["flops", "val_loss"], f"metrics of size {name!r}")
        ok = df[np.isfinite(df["val_loss"]) & (df["flops"] > 0)]
        ax.plot(ok["flops"], ok["val_loss"], color=colours.get(size, "0.5"), lw=1.0, alpha=0.35,
                marker="o", ms=2, zorder=2)
    means = _draw_runs(ax, table, column, colours)
    # Names above right of the points; below left where curves come in from the upper left
    # (and the fit leaves to the lower right).
    offset, ha = ((-6, -13), "right") if curves else ((6, 6), "left")
    for r in means.itertuples():
        ax.annotate(str(r.size), (r.X, r.L), xytext=offset, ha=ha, textcoords="offset points", fontsize=8, zorder=6)
    grid = np.logspace(np.log10(X.min()) - 0.3, np.log10(X.max()) + 0.3, 200)
    if fit is not None and "error" not in fit:
        sat_label, pl_label = (_law_label(fit, law, variable) for law in ("saturating", "power_law"))
        sat = fit["saturating"]
        preferred = fit.get("preferred")
        band = fit.get("band") or {}
        styles = {"saturating": ("black", "-", 1.8), "power_law": ("C3", "-.", 1.4)}
        for law, label in (("saturating", sat_label), ("power_law", pl_label)):
            if not label:
                continue
            colour, ls, lw = styles[law]
            if preferred is not None and law != preferred:
                lw, alpha = lw * 0.7, 0.55
            else:
                alpha = 1.0
            ax.plot(grid, predict(fit, grid, law), color=colour, lw=lw, ls=ls, alpha=alpha, label=label, zorder=3)
            b = band.get(law) if isinstance(band, Mapping) else None
            if b and (preferred is None or law == preferred):
                ax.fill_between(band[variable], b["lo"], b["hi"], color=colour, alpha=0.15, lw=0, zorder=1,
                                label=f"{100 * fit.get('ci_level', 0.95):g} % bootstrap band over runs")
        if sat_label and sat.get("L_inf") is not None and preferred in (None, "saturating"):
            ax.axhline(sat["L_inf"], color="black", ls=":", lw=1, label="$L_\\infty$ (irreducible loss)")
        elif sat.get("reason"):
            ax.plot([], [], " ", label=textwrap.fill(f"saturating fit: {sat['reason']}", 58))
        if fit.get("note"):
            ax.plot([], [], " ", label=textwrap.fill(f"NOTE: {fit['note']}", 58))
    elif fit is not None:
        ax.plot([], [], " ", label=textwrap.fill(f"no fit: {fit['error']}", 58))
    _loss_limits(ax, L, fit, curves)
    _below_legend(ax, -0.13)


def _loss_limits(ax, L: np.ndarray, fit: Mapping | None, curves=None) -> None:
    """Keep the view on the final losses (L_inf may sit far below them, early losses far
    above); with curves, show their last stretch, up to 1.6x the largest final loss."""
    lo, hi = float(np.min(L)), float(np.max(L))
    span = max(hi / lo, 1.1)
    top = hi * span**0.35
    if curves:
        top_curves = max((df["val_loss"][df["flops"] > 0].max() for df in curves.values()), default=top)
        top = max(top, min(top_curves * 1.02, hi * 1.6)) if np.isfinite(top_curves) else top
    ax.set_ylim(lo / span**0.25, top)
    L_inf = ((fit or {}).get("saturating") or {}).get("L_inf")
    if L_inf is not None and lo * 0.7 < L_inf < lo:  # near the data: show it; far below: legend only
        ax.set_ylim(min(ax.get_ylim()[0], L_inf * 0.98), None)
    _plain_log_axis(ax.yaxis)
    y0, y1 = ax.get_ylim()
    if y1 / y0 < 3:  # under half a decade: evenly spaced plain ticks read better than 2x, 3x, 5x
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)


def _holdout_panel(ax, table: pd.DataFrame, holdout: Mapping, colours: dict) -> None:
    """The held-out test: the law fitted without one size, extrapolated to it, its prediction
    intervals beside the held-out runs."""
    from astropt.scaling import predict  # here: scaling imports scipy.stats (about 1.5 s)

    ax.set_xscale("log")
    ax.set_yscale("log")
    size = holdout["size"]
    rest = table[table["size"].astype(str) != str(size)]
    held = table[table["size"].astype(str) == str(size)]
    _draw_runs(ax, rest, "params", colours)
    Xh = float(holdout["N"])
    ax.scatter(held["params"], held["val_loss"], s=40, marker="D", facecolors="none",
               edgecolors=colours.get(size, "black"), linewidths=1.5, zorder=6,
               label=f"held-out {size}: its runs (not fitted)")
    fit, law = holdout["fit"], holdout["law"]
    grid = np.logspace(np.log10(rest["params"].min()) - 0.1, np.log10(Xh) + 0.1, 200)
    name = "power law" if law == "power_law" else "saturating law"
    ax.plot(grid, predict(fit, grid, law), color="C0", lw=1.6, ls="--", zorder=3,
            label=f"{name} fitted on the other sizes, extrapolated")
    pct = f"{100 * holdout.get('ci_level', 0.95):g} %"
    pred = holdout["predicted"]
    for key, width, what in (("pi_run", 1.2, "one run"), ("pi_mean", 3.5, f"the mean of {holdout['n_runs']} runs")):
        pi = holdout.get(key)
        if pi:
            ax.errorbar(Xh * (1.06 if key == "pi_run" else 1.0), pred, yerr=[[pred - pi[0]], [pi[1] - pred]],
                        fmt="s" if key == "pi_mean" else "none", ms=6, color="C0", mfc="white", elinewidth=width,
                        capsize=4, zorder=7, label=f"prediction, {pct} interval for {what}")
    ax.axhline(holdout["observed_mean"], color="0.3", lw=0.9, ls=":", zorder=2,
               label=f"mean of the held-out runs: {holdout['observed_mean']:.4g}")
    verdict = "PASSED" if holdout.get("inside_mean") else "MISSED" if holdout.get("inside_mean") is False else "n/a"
    ax.set_title(f"Held-out size {size}: predicted from the others ({verdict})", fontsize=11)
    values = np.concatenate([table["val_loss"].to_numpy(float), [pred],
                             *(holdout.get(k) or [] for k in ("pi_run", "pi_mean"))])
    _loss_limits(ax, values, None)
    ax.set_xlabel("parameters N (excluding position embedding)")
    ax.set_ylabel("validation loss")
    _size_axis(ax)
    _below_legend(ax, -0.13)


def _size_axis(ax) -> None:
    """Parameter counts as 42k, 1.1M on a log x axis; 2x and 5x labelled too under 2 decades."""
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _human(v)))
    lo, hi = ax.get_xlim()
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: _human(v) if hi / lo < 100 and _mantissa(v) in (2, 5) else ""))


def _compute_panel(ax, table: pd.DataFrame, fit: Mapping | None, colours: dict, metrics, sizes: list) -> None:
    """:func:`plot_scaling`'s panel against training compute, with the runs' curves and their key."""
    from matplotlib.lines import Line2D

    _scaling_panel(ax, table, "flops", "C", fit, colours, curves=metrics)
    ax.set_xlabel("training compute C (FLOPs)")
    _flops_axis(ax)
    ax.set_title("Final validation loss vs training compute", fontsize=11)
    ax.set_ylabel("validation loss")
    names = [s for s in sizes if any(str(k).split("/")[0] == s for k in (metrics or {}))]
    if names:  # the curves' key, below the panel beside the fits' legend
        fits_legend = ax.get_legend()
        handles = [Line2D([], [], color=colours[s], lw=1.5, marker="o", ms=3, alpha=0.6) for s in names]
        ax.legend(handles, names, title="validation loss\nduring training", fontsize=7.5, title_fontsize=7.5,
                  loc="upper right", bbox_to_anchor=(1.0, -0.13), ncols=2 if len(names) > 4 else 1,
                  frameon=False, borderaxespad=0)
        ax.add_artist(fits_legend)


def plot_scaling(
    table: pd.DataFrame,
    fit: Mapping | None,
    out: str | os.PathLike,
    metrics: Mapping[str, pd.DataFrame] | None = None,
) -> dict[str, list[str]]:
    """Final validation loss against parameters and against training compute, with the fits.

    Left: every run's loss against parameter count N (small points), each size's mean with
    its between-run spread, the saturating and plain power laws (the preferred one bold, with
    its bootstrap band over runs) and their exponents with analytic and bootstrap intervals in
    the legend. Middle, when ``fit`` has a held-out size: the law fitted without it,
    extrapolated, its prediction intervals and the held-out runs. Right (when ``table`` has
    ``flops``): the same against training FLOPs C, with each run's validation curve; a note
    when every run saw the same tokens (C is then N in other units).

    Args:
        table: One row per run, columns ``size`` (name such as ``"2M"``), ``params``,
            ``val_loss`` and, for the compute panel, ``flops``; several runs (seeds) per size
            are fine.
        fit: ``results/scaling/fit.json`` (``{"params", "compute", "holdout"}``), a single
            :func:`astropt.scaling.fit_scaling_laws` result (drawn in the panel of its
            variable), or ``None``; a variable without a fit is fitted here.
        out: PNG path.
        metrics: Run (``"size"`` or ``"size/seedN"``) -> its ``metrics.csv`` (columns
            ``flops``, ``val_loss``; NaN where not evaluated), for the curves of the compute panel.

    Returns:
        What was drawn: ``{"titles": [...], "legends": [[label, ...] per panel]}``.

    Raises:
        ValueError: If a column is missing from ``table`` or a metrics table.
    """
    _require(table, ["size", "params", "val_loss"], "scaling table")
    fits = _scaling_fits(table, fit)
    holdout = (fit or {}).get("holdout") if isinstance(fit, Mapping) else None
    show_holdout = bool(holdout and holdout.get("predicted") is not None and holdout.get("fit"))
    sizes = _sizes_by_params(table)
    colours = _size_colours(sizes)
    compute = "flops" in table.columns
    n_panels = 1 + show_holdout + compute
    fig = Figure(figsize=(6.3 * n_panels, 6.6), layout="constrained")
    axes = list(fig.subplots(1, n_panels, squeeze=False)[0])
    _scaling_panel(axes[0], table, "params", "N", fits.get("N"), colours)
    _size_axis(axes[0])
    axes[0].set_xlabel("parameters N (excluding position embedding)")
    axes[0].set_ylabel("validation loss")
    runs = len(table)
    axes[0].set_title(f"Final validation loss vs model size ({runs_text(runs)})", fontsize=11)
    if show_holdout:
        _holdout_panel(axes[1], table, holdout, colours)
    if compute:
        _compute_panel(axes[-1], table, fits.get("C"), colours, metrics, sizes)
    drawn = {"titles": [a.get_title() for a in axes],
             "legends": [[t.get_text() for t in a.get_legend().get_texts()] if a.get_legend() else [] for a in axes]}
    for a in axes:  # the fits' legends moved aside by the curves' key are artists, not the legend
        for artist in a.artists:
            if hasattr(artist, "get_texts"):
                drawn["legends"][axes.index(a)] += [t.get_text() for t in artist.get_texts()]
    _save(fig, out)
    return drawn


#: Panels of the downstream figure, as (protocol, metric): each drawn when the summary has it.
DOWNSTREAM_PANELS = (("paper", "median_abs_error"), ("ridge_cv", "r2"), ("logistic_cv", "roc_auc"))

_METRIC_NAMES = {"median_abs_error": "median absolute error", "r2": "R²", "accuracy": "accuracy", "roc_auc": "ROC AUC"}

_PROTOCOL_TITLES = {
    "paper": "paper protocol (linear regression, held-out half)",
    "ridge_cv": "ridge regression (k-fold cross-validation)",
    "logistic_cv": "logistic regression of flags (k-fold cross-validation)",
}

def _downstream_panel(ax, rows: pd.DataFrame, colours: dict, protocol: str, metric: str) -> None:
    """One panel of :func:`plot_downstream`: a line per property, rho in the legend."""
    ax.set_xscale("log")
    ax.axhline(1.0, color="grey", lw=1, ls="--", zorder=1)
    markers = "osD^v<>ph*"
    several = "n_runs" in rows and rows["n_runs"].max() > 1
    n_props = rows["property"].nunique()
    for i, (prop, grp) in enumerate(rows.groupby("property", sort=False)):
        rho, p = grp["spearman_rho"].iloc[0], grp["spearman_p"].iloc[0]
        stat = f"ρ = {rho:+.2f}, p = {p:.2g}" if np.isfinite(rho) else "ρ n/a"
        agree = grp["seeds_agree"].iloc[0] if "seeds_agree" in grp else np.nan
        if np.isfinite(agree):
            stat += f", {agree:.0%} of seeds agree"
        # Sizes side by side would hide each other's bars: nudge each property a little.
        nudge = 1.0 + 0.01 * (i - (n_props - 1) / 2) if several else 1.0
        ax.errorbar(
            grp["params"] * nudge,
            grp["relative"],
            yerr=grp["relative_sd"].fillna(0) if several else None,
            marker=markers[i % len(markers)],
            ms=5,
            lw=1.5,
            elinewidth=0.9,
            capsize=2,
            color=colours[prop],
            label=f"{prop} ({stat})",
        )
    rel = rows["relative"].to_numpy(dtype=float)
    sd = rows["relative_sd"].fillna(0).to_numpy(dtype=float) if several else np.zeros_like(rel)
    ok = np.isfinite(rel)
    if several and ok.any():  # bars shown whole, unless one (a near-zero base) would flatten the means
        lo, hi = min(rel[ok].min(), 1.0), max(rel[ok].max(), 1.0)
        span = max(hi - lo, 0.1)
        lo, hi = max((rel - sd)[ok].min(), lo - span), min((rel + sd)[ok].max(), hi + span)
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    sizes = rows.drop_duplicates("params").sort_values("params")
    ax.set_xticks(sizes["params"].to_numpy(dtype=float))
    ax.set_xticklabels(
        [
            str(s) if str(s) == _human(p) else f"{s}\n({_human(p)})"
            for s, p in zip(sizes["size"], sizes["params"])
        ]
    )
    ax.xaxis.set_minor_formatter(NullFormatter())
    if len(sizes) > 1:
        lo, hi = sizes["params"].min(), sizes["params"].max()
        pad = (hi / lo) ** 0.06
        ax.set_xlim(lo / pad, hi * pad)
    direction = "higher is better" if rows["higher_is_better"].iloc[0] else "lower is better"
    nice = _METRIC_NAMES.get(metric, metric)
    ax.set_xlabel("model size (parameters)")
    ax.set_ylabel(f"{nice} relative to smallest model\n({direction})"
                  + ("; mean of runs ± sd" if several else ""))
    ax.set_title(f"{_PROTOCOL_TITLES.get(protocol, protocol)}: {nice}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(
        title="property (Spearman ρ, size vs score)",
        fontsize=7,
        title_fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0,
    )


def plot_downstream(
    summary: pd.DataFrame,
    out: str | os.PathLike,
    panels: Sequence[tuple[str, str]] = DOWNSTREAM_PANELS,
) -> None:
    """The paper's downstream figure: each property's score relative to the smallest model
    against size, one line per property with Spearman's rho (and p) in the legend.

    One panel per (protocol, metric) of ``panels`` that the summary has, stacked: by
    default the paper protocol's median absolute error (the paper's figure), the ridge
    probe's R^2 and, when flags were probed, the logistic probe's ROC AUC. A property
    keeps its colour across panels.

    Args:
        summary: :func:`astropt.probe.downstream_table`'s output.
        out: PNG path.
        panels: (protocol, metric) pairs to draw, in order.

    Raises:
        ValueError: If a column is missing or the summary has none of ``panels``.
    """
    from astropt.probe import SUMMARY_COLUMNS

    _require(summary, SUMMARY_COLUMNS, "downstream summary")
    drawn = [
        (protocol, metric)
        for protocol, metric in panels
        if ((summary["protocol"] == protocol) & (summary["metric"] == metric)).any()
    ]
    if not drawn:
        have = sorted(set(zip(summary["protocol"], summary["metric"])))
        raise ValueError(f"the downstream summary has none of the panels {list(panels)}; it has {have}")
    props = list(dict.fromkeys(summary["property"]))
    cmap = colormaps["tab10" if len(props) <= 10 else "tab20"]
    colours = {prop: cmap(i % cmap.N) for i, prop in enumerate(props)}
    fig = Figure(figsize=(8.5, 4.6 * len(drawn)))
    axes = fig.subplots(len(drawn), 1, squeeze=False)[:, 0]
    for ax, (protocol, metric) in zip(axes, drawn):
        rows = summary[(summary["protocol"] == protocol) & (summary["metric"] == metric)]
        _downstream_panel(ax, rows, colours, protocol, metric)
    fig.subplots_adjust(hspace=0.45)
    _save(fig, out)


def umap_embedding(
    X: np.ndarray,
    seed: int | None = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
) -> np.ndarray:
    """Project embeddings to 2-D with UMAP after standardising each feature.

    ``umap`` is imported here: its import and first fit compile with numba
    (tens of seconds).

    Args:
        X: Embeddings, shape (n, d), finite.
        seed: UMAP ``random_state``; with a seed UMAP runs single-threaded and is
            reproducible. ``None`` runs parallel and non-deterministic.
        n_neighbors: UMAP neighbourhood size (capped at n - 1).
        min_dist: UMAP minimum distance between embedded points.

    Returns:
        Coordinates, shape (n, 2).

    Raises:
        ValueError: If ``X`` is not 2-D, has fewer than 3 rows, or is not finite.
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or len(X) < 3:
        raise ValueError(f"X must be 2-D with at least 3 rows, got shape {X.shape}")
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
        raise ValueError(f"X has non-finite values in {len(bad)} rows, e.g. {bad[:5].tolist()}")
    std = X.std(axis=0)
    Z = (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)

    import umap  # slow import (numba)
    from sklearn.neighbors import NearestNeighbors

    k = min(n_neighbors, len(X) - 1)
    # The exact neighbours (each point first, as UMAP expects) from scikit-learn: UMAP's own
    # search is exact too below 4,096 points, but compiles with numba first (about 8 s
    # of the figure's job on a fresh environment).
    dists, idx = NearestNeighbors(n_neighbors=k).fit(Z).kneighbors(Z)
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=k,
        min_dist=min_dist,
        random_state=seed,
        n_jobs=1 if seed is not None else -1,
        precomputed_knn=(idx, dists.astype(np.float32), None),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # spectral-init / n_jobs chatter on small inputs
        return np.asarray(reducer.fit_transform(Z), dtype=np.float64)


def plot_umap(
    coords: np.ndarray,
    values: pd.DataFrame,
    out: str | os.PathLike,
    title: str = "",
    gridsize: int = 40,
) -> None:
    """Hexbin panels of a 2-D embedding, one per property, coloured by its median.

    Args:
        coords: Embedded coordinates, shape (n, 2).
        values: One column per property, n rows aligned with ``coords``; NaNs are
            dropped from that property's panel only.
        out: PNG path.
        title: Figure title.
        gridsize: Hexagons across the x direction.

    Raises:
        ValueError: If ``coords`` is not (n, 2) or ``values`` has another length.
    """
    coords = np.asarray(coords, dtype=float)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must have shape (n, 2), got {coords.shape}")
    if len(values) != len(coords):
        raise ValueError(f"values has {len(values)} rows but coords has {len(coords)}")
    names = list(values.columns)
    if not names:
        raise ValueError("values has no property columns to plot")
    ncols = min(4, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(3.6 * ncols, 3.2 * nrows + (0.4 if title else 0)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    pad = 0.03 * (hi - lo)
    extent = (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])
    for ax, name in zip(axes, names):
        c = pd.to_numeric(values[name], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(c)
        ax.set_title(name, fontsize=10)
        ax.set(xticks=[], yticks=[], xlim=extent[:2], ylim=extent[2:])
        if not ok.any():
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
            continue
        vmin, vmax = np.percentile(c[ok], [2, 98])
        if vmin == vmax:
            vmin, vmax = vmin - 0.5, vmax + 0.5
        # Grey underlay: every galaxy, so the manifold shows even where this property is NaN.
        ax.hexbin(*coords.T, gridsize=gridsize, extent=extent, cmap=ListedColormap(["0.88"]),
                  mincnt=1, linewidths=0.1)
        hb = ax.hexbin(
            coords[ok, 0], coords[ok, 1], C=c[ok], gridsize=gridsize, extent=extent,
            reduce_C_function=np.median, cmap="viridis", vmin=vmin, vmax=vmax, linewidths=0.1,
        )
        cbar = fig.colorbar(hb, ax=ax, shrink=0.9, pad=0.02)
        cbar.ax.tick_params(labelsize=8)
        if (~ok).any():
            ax.text(0.02, 0.02, f"{(~ok).sum()} NaN dropped", fontsize=7, color="0.4",
                    transform=ax.transAxes)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel("UMAP 2", fontsize=8)
    for ax in axes[(nrows - 1) * ncols:]:
        ax.set_xlabel("UMAP 1", fontsize=8)
    if title:
        fig.suptitle(title)
    _save(fig, out)


def plot_loss_curves(metrics: Mapping[str, pd.DataFrame], out: str | os.PathLike) -> None:
    """Plot training and validation loss against tokens seen, one colour per size.

    Args:
        metrics: Run name (``"42K/seed0"``, or a size name) -> metrics table (columns
            ``tokens_seen``, ``train_loss``, ``val_loss``; ``val_loss`` NaN where not
            evaluated), in the order to draw (smallest model first reads best). The runs of
            one size share its colour, one line each.
        out: PNG path.
    """
    colours = _size_colours(list(dict.fromkeys(str(name).split("/")[0] for name in metrics)))
    fig = Figure(figsize=(11, 4.3), layout="constrained")
    ax_tr, ax_va = fig.subplots(1, 2, sharex=True, sharey=True)
    labelled = set()
    for name, df in metrics.items():
        _require(df, ["tokens_seen", "train_loss", "val_loss"], f"metrics of size {name!r}")
        size = str(name).split("/")[0]
        color = colours[size]
        runs = sum(str(k).split("/")[0] == size for k in metrics)
        label = None if size in labelled else (size if runs == 1 else f"{size} ({runs} runs)")
        labelled.add(size)
        tr = df[np.isfinite(df["train_loss"]) & (df["tokens_seen"] > 0)]
        va = df[np.isfinite(df["val_loss"]) & (df["tokens_seen"] > 0)]
        ax_tr.plot(tr["tokens_seen"], tr["train_loss"], color=color, lw=1, alpha=0.85 if runs == 1 else 0.55,
                   label=label)
        ax_va.plot(va["tokens_seen"], va["val_loss"], color=color, lw=1.5 if runs == 1 else 1.0, marker="o",
                   ms=3 if runs == 1 else 2, alpha=1.0 if runs == 1 else 0.7, label=label)
    for ax, what in ((ax_tr, "training"), (ax_va, "validation")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens seen")
        ax.set_title(f"{what} loss")
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
        _plain_log_axis(ax.yaxis)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _human(v)))
    ax_tr.set_ylabel("Huber loss")
    ax_va.legend(title="model size", fontsize=8)
    _save(fig, out)


_SHORT_NAMES = {
    "mag_g_desi": "g", "mag_r_desi": "r", "mag_z_desi": "z", "redshift": "zred",
    "est_petro_th50": "r50", "mass_med_photoz": "logM", "ssfr_med_photoz": "sSFR",
    "bulge_fraction": "B/T", "axis_ratio": "b/a",
}


def _displayable(img: np.ndarray) -> np.ndarray:
    """An (H, W, C) stamp as something imshow shows: 8-bit as is, float data scaled per
    stamp (0.5-99.5 percentiles, asinh), one band as grey, more than three bands cut to three."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    elif img.ndim == 3 and img.shape[-1] > 3:
        img = img[..., :3]
    if img.dtype == np.uint8:
        return img
    lo, hi = np.nanpercentile(img, [0.5, 99.5])
    x = np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1)
    return np.arcsinh(10 * x) / np.arcsinh(10)


def plot_examples(
    stamp: Callable[[int], np.ndarray],
    metadata: pd.DataFrame,
    out: str | os.PathLike,
    n: int = 16,
    columns: tuple[str, ...] = ("mag_r_desi", "redshift", "est_petro_th50"),
    seed: int = 0,
) -> None:
    """Plot a grid of example stamps, each captioned with its id and a few truths.

    Args:
        stamp: The (H, W, C) stamp of a metadata row position (the workflow rebuilds it from
            the tokens, which serves FITS and any band count; float data are scaled for display).
        metadata: One row per galaxy with ``id`` and ``columns``.
        out: PNG path.
        n: Stamps to show (fewer if the table is shorter), drawn at random without
            replacement and shown in table order.
        columns: Truths in the captions (2 decimals; short names for the usual ones).
        seed: Seeds the choice of stamps.
    """
    _require(metadata, ["id", *columns], "the metadata table")
    n = min(n, len(metadata))
    if n < 1:
        raise ValueError("plot_examples needs at least one galaxy in the metadata table")
    rows = np.sort(np.random.default_rng(seed).choice(len(metadata), size=n, replace=False))
    ncol = math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(1.9 * ncol, 2.2 * nrow), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, pos in zip(axes, rows):
        row = metadata.iloc[pos]
        img = _displayable(stamp(int(pos)))
        ax.imshow(img, interpolation="nearest", cmap="gray" if img.ndim == 2 else None)
        # No-break spaces keep each "name value" pair on one line when the caption wraps.
        caption = ", ".join(f"{_SHORT_NAMES.get(c, c)}\u00a0{row[c]:.2f}" for c in columns)
        ax.set_title(f"{row['id']}\n" + "\n".join(textwrap.wrap(caption, 28)), fontsize=6.5)
    _save(fig, out)


# --- The N x D grid: IsoFLOP profiles (approach 2), the compute-optimal frontier and the loss
# against tokens (approach 3), with the held-out corner. ``grid`` is the grid rule's dict:
# ``{"approach3": fit_grid(...) + "frontier", "isoflop": {...}, "holdout": {...}}``; any part
# may carry only a "reason", which is then written in the panel instead of what it would draw.
# Artists that tests look for carry a ``gid`` ("parabola:0", "approach3:N", "holdout:observed").


def _value_ci(value: float | None, ci: Sequence[float] | None) -> str:
    """``0.503 [0.471, 0.534]``: a fitted value with its interval, at the decimals of its width."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if ci and len(ci) == 2 and None not in ci and all(math.isfinite(v) for v in ci) and ci[1] > ci[0]:
        d = max(2, min(6, 1 - math.floor(math.log10((ci[1] - ci[0]) / 4))))
        return f"{value:.{d}f} [{ci[0]:.{d}f}, {ci[1]:.{d}f}]"
    return f"{value:.3g}"


def _flops_text(C: float) -> str:
    """FLOPs as mathtext: ``1.2×10^15``."""
    e = math.floor(math.log10(C))
    m = f"{C / 10**e:.2g}"
    if float(m) >= 10:
        e, m = e + 1, f"{C / 10 ** (e + 1):.2g}"
    return f"${m}{{\\times}}10^{{{e}}}$"


def _sizes_by_params(table: pd.DataFrame) -> list[str]:
    """The table's sizes, smallest first."""
    return list(dict.fromkeys(table.sort_values("params", kind="stable")["size"]))


def _size_colours(sizes: Sequence[str]) -> dict:
    """Each size's colour: viridis over ``sizes`` in order (smallest first)."""
    return {s: colormaps["viridis"](i / max(len(sizes) - 1, 1) * 0.9) for i, s in enumerate(sizes)}


def _notes(ax, notes: Sequence[str], centre: bool = False) -> None:
    """What a panel cannot draw, and why, written in it (lower left, under the data; centred when
    the panel is empty)."""
    if not notes:
        return
    text = "\n".join(textwrap.fill(n, 62) for n in notes)
    x, y, ha, va = (0.5, 0.5, "center", "center") if centre else (0.02, 0.02, "left", "bottom")
    ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=8, zorder=0.8, gid="note",
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.6", "alpha": 0.9})


def _unidentified(fit: Mapping, *names: str) -> str:
    """Why ``fit`` (approach 3) has no value of ``names``: not identified by the grid (with
    the reasons), or no fit at all."""
    if "unidentified" not in fit:
        return f"no fit ({fit.get('reason') or fit.get('error') or 'none in the grid section'})"
    why = "; ".join(dict.fromkeys((fit.get("unidentified") or {}).get(n) or "not in the fit" for n in names))
    return f"{', '.join(names)} not identified ({why})"


def _grid_part(grid: Mapping, key: str) -> Mapping:
    """``grid[key]``; without it, the grid's own ``reason`` (no grid at all) stands in."""
    part = grid.get(key)
    if part:
        return part
    return {"reason": grid["reason"]} if grid.get("reason") else {}


def _below_legend(ax, y: float = -0.11) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(0.0, y), ncols=1, frameon=False,
                  borderaxespad=0)


def _level_label(lv: Mapping, C: float, has_min: bool) -> str:
    """An IsoFLOP level's legend label: its minimum ``N_opt`` with the interval (or why there is
    none), or why the level has no minimum."""
    if has_min:
        n_opt, ci = lv.get("N_opt"), lv.get("N_opt_ci")
        label = f"C = {_flops_text(C)}: $N_{{opt}}$ = {_human(n_opt)}"
        share, why = lv.get("unbracketed_share"), lv.get("reason")
        if ci and None not in ci:
            label += f" [{_human(ci[0])}, {_human(ci[1])}]"
        elif why:
            label += f", no interval: {why}"
        if share and not why:
            label += f"; minimum outside the sizes in {100 * share:.0f} % of resamples"
        return label
    why = lv.get("reason")
    return f"C = {_flops_text(C)}: " + (why if why and "minimum" in why else
                                        "no minimum" + (f" ({why})" if why else ""))


def _draw_level(ax, i: int, lv: Mapping, colour) -> tuple[list, bool, bool]:
    """The ``i``-th IsoFLOP level of :func:`_draw_isoflop`, in ``colour``: its points, its parabola
    (or profile) and its minimum. Returns the losses drawn, whether the level is dashed (no
    minimum) and whether its minimum is marked."""
    C = float(lv["C"])
    N = np.asarray(lv.get("N") or [], dtype=float)
    L = np.asarray(lv.get("L") or [], dtype=float)
    ok = np.isfinite(N) & np.isfinite(L) & (N > 0) & (L > 0)
    N, L = N[ok], L[ok]
    order = np.argsort(N)
    N, L = N[order], L[order]
    losses = list(L)
    if len(N):
        ax.plot(N, L, ls="", marker="o", ms=4, color=colour, alpha=0.8, zorder=4, gid=f"points:{i}")
    n_opt, ci = lv.get("N_opt"), lv.get("N_opt_ci")
    has_min = n_opt is not None and math.isfinite(n_opt)
    par = lv.get("parabola")
    par = None if par is None or None in par else [float(v) for v in par]
    label = _level_label(lv, C, has_min)
    style = {"color": colour, "lw": 1.6 if has_min else 1.2, "ls": "-" if has_min else "--", "zorder": 3,
             "label": label, "gid": f"parabola:{i}" if par else f"profile:{i}"}
    if par and len(N) >= 2:
        c2, c1, c0 = par
        x = np.linspace(math.log(N[0]), math.log(N[-1]), 200)
        if c2 > 0 and x[0] < -c1 / (2 * c2) < x[-1]:  # the vertex itself, so the line's lowest point is it
            x = np.sort(np.append(x, -c1 / (2 * c2)))
        ax.plot(np.exp(x), np.exp(c2 * x * x + c1 * x + c0), **style)
    elif len(N) >= 2:
        ax.plot(N, L, **style)
    else:
        ax.plot([], [], " ", label=label)
    L_opt = lv.get("L_opt")
    if has_min and L_opt is None and par:
        L_opt = math.exp(par[0] * math.log(n_opt) ** 2 + par[1] * math.log(n_opt) + par[2])
    marked = False
    if has_min and L_opt is not None:
        xerr = [[n_opt - ci[0]], [ci[1] - n_opt]] if ci and None not in ci else None
        eb = ax.errorbar(n_opt, L_opt, xerr=xerr, fmt="*", ms=13, mfc=colour, mec="black", mew=0.8,
                         ecolor="black", elinewidth=1.2, capsize=3, zorder=6)
        eb.lines[0].set_gid(f"minimum:{i}")
        for col in eb.lines[2]:
            col.set_gid(f"minimum_ci:{i}")
        losses.append(L_opt)
        marked = True
    return losses, not has_min, marked


def _isoflop_footer(ax, iso: Mapping, a3: Mapping, pct: str, dashed: bool, marked: bool) -> None:
    """The legend's last entries in :func:`_draw_isoflop`: the star and the dashes explained, then
    the exponent ``a`` of approach 2 and of approach 3."""
    if marked:
        ax.plot([], [], ls="", marker="*", ms=10, mfc="white", mec="black",
                label=f"minimum of the level's parabola (ln L in ln N) ± {pct} bootstrap interval")
    if dashed:
        ax.plot([], [], ls="--", color="0.4", label="no minimum inside the level's range")
    a2 = iso.get("a")
    if a2 is not None:
        label = f"approach 2 (IsoFLOP minima): $N_{{opt}}{{\\propto}}C^a$, a = {_value_ci(a2, iso.get('a_ci'))}"
    else:
        label = f"approach 2 (IsoFLOP minima): a not measured ({iso.get('reason') or 'fewer than two minima'})"
    ax.plot([], [], " ", label=label)
    ax.plot([], [], " ", label=(f"approach 3 (fit of L(N, D)): a = {_value_ci(a3['a'], a3.get('a_ci'))}"
                                if a3.get("a") is not None else
                                f"approach 3 (fit of L(N, D)): {_unidentified(a3, 'a')}"))


def _draw_isoflop(table: pd.DataFrame, grid: Mapping) -> Figure:
    """:func:`plot_isoflop`'s figure (its first axes the profiles, the second the colourbar)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm

    fig = Figure(figsize=(8.0, 7.6), layout="constrained")
    ax = fig.subplots()
    iso = _grid_part(grid, "isoflop")
    a3 = _grid_part(grid, "approach3")
    levels = sorted((lv for lv in iso.get("levels") or [] if lv.get("C")), key=lambda lv: float(lv["C"]))
    runs = f" ({len(table)} runs)" if len(table) else ""
    ax.set_title(f"IsoFLOP profiles (approach 2): loss vs model size at fixed compute{runs}", fontsize=11)
    ax.set_xlabel("parameters N (excluding position embedding)")
    ax.set_ylabel("validation loss (interpolated on the level)")
    if not levels:
        ax.set_xticks([])
        ax.set_yticks([])
        _notes(ax, [f"approach 2 (IsoFLOP profiles): {iso.get('reason') or 'no IsoFLOP levels in the grid'}"],
               centre=True)
        return fig
    ax.set_xscale("log")
    ax.set_yscale("log")
    Cs = [float(lv["C"]) for lv in levels]
    norm = LogNorm(min(Cs) / (1.5 if len(Cs) == 1 else 1), max(Cs) * (1.5 if len(Cs) == 1 else 1))
    cmap = ListedColormap(colormaps["plasma"](np.linspace(0.0, 0.85, 256)))  # without its pale yellow end
    pct = f"{100 * (iso.get('ci_level') or a3.get('ci_level') or 0.95):g} %"
    losses, dashed, marked = [], False, False
    for i, lv in enumerate(levels):
        level_losses, level_dashed, level_marked = _draw_level(ax, i, lv, cmap(norm(float(lv["C"]))))
        losses.extend(level_losses)
        dashed, marked = dashed or level_dashed, marked or level_marked
    _isoflop_footer(ax, iso, a3, pct, dashed, marked)
    if losses:
        _loss_limits(ax, np.asarray(losses, dtype=float), None)
    _size_axis(ax)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01, label="compute C = 6ND of the level (FLOPs)")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, [textwrap.fill(t, 90, subsequent_indent="    ") for t in labels], fontsize=7.5,
              loc="upper left", bbox_to_anchor=(0.0, -0.11), ncols=1, frameon=False, borderaxespad=0)
    return fig


def plot_isoflop(table: pd.DataFrame, grid: Mapping, out: str | os.PathLike) -> None:
    """Chinchilla's approach 2: the loss along each IsoFLOP level against model size.

    At each compute level C (colour, with a colourbar in FLOPs): the losses interpolated on the
    level (points), the parabola fitted to ln L against ln N over the level's range of N (line),
    its minimum (star) with the bootstrap interval of ``N_opt`` (horizontal bar). A level whose
    parabola has no minimum inside its range is drawn dashed, without a star, and says why. The
    legend ends with the exponent ``a`` of ``N_opt ~ C^a`` from the minima (approach 2) beside
    approach 3's (from the fit of L(N, D)), each with its interval.

    Args:
        table: The grid's runs (one row each); only counted here.
        grid: The grid rule's dict; ``grid["isoflop"]`` has the levels (or only a ``reason``,
            then written in the panel) and ``grid["approach3"]`` the fit.
        out: PNG path.
    """
    _save(_draw_isoflop(table, grid), out)


def _flops_axis(ax) -> None:
    """A log axis of FLOPs: powers of ten, and 2x and 5x too under 2 decades (as in
    :func:`plot_scaling`); no crowded minor labels."""
    lo, hi = ax.get_xlim()

    def flops(v: float, _: int) -> str:
        m, e = _mantissa(v), math.floor(math.log10(v) + 1e-9)
        return f"${m}{{\\times}}10^{{{e}}}$" if hi / lo < 100 and m in (2, 5) else ""

    ax.xaxis.set_minor_formatter(FuncFormatter(flops))
    ax.tick_params(axis="x", which="minor", labelsize=8)


def _frontier_approach3(ax, key: str, exp_name: str, opt: str, a3: Mapping, C_all: np.ndarray, pct: str) -> list:
    """Approach 3's frontier of ``key`` (N or D) in a panel of :func:`_draw_frontier`, with its
    bootstrap band when the frontier has one. Returns the notes of what could not be drawn."""
    from astropt.chinchilla import optimal_allocation

    notes = []
    front = a3.get("frontier") or None
    a_value = a3.get(exp_name)
    if a_value is None:
        notes.append(f"approach 3 (fit of L(N, D)), no frontier: {_unidentified(a3, exp_name)}")
        return notes
    label = f"approach 3 (fit of L(N, D)): ${opt}{{\\propto}}C^{exp_name}$, {exp_name} = " \
            f"{_value_ci(a_value, a3.get(f'{exp_name}_ci'))}"
    lo = hi = None
    if front and front.get("C"):
        C = np.asarray(front["C"], dtype=float)
        y = np.asarray(front[f"{key}_opt"], dtype=float)
        if front.get(f"{key}_lo") is not None and front.get(f"{key}_hi") is not None:
            lo = np.asarray(front[f"{key}_lo"], dtype=float)
            hi = np.asarray(front[f"{key}_hi"], dtype=float)
    elif a3.get("G") is not None:
        C = np.geomspace(C_all.min() / 2, C_all.max() * 2, 100)
        y = optimal_allocation(a3, C)[0 if key == "N" else 1]
    else:
        C = None
        notes.append(f"approach 3 (fit of L(N, D)), no frontier: {_unidentified(a3, 'G')}")
    if C is not None:
        ax.plot(C, y, color="black", lw=1.8, zorder=4, label=label, gid=f"approach3:{key}")
        if lo is not None:
            ax.fill_between(C, lo, hi, color="black", alpha=0.13, lw=0, zorder=2, gid=f"approach3_band:{key}",
                            label=f"approach 3: {pct} bootstrap band of ${opt}$")
    return notes


def _frontier_approach2(ax, key: str, exp_name: str, opt: str, iso: Mapping, levels: list, pct2: str) -> list:
    """Approach 2 in a panel of :func:`_draw_frontier`: each IsoFLOP level's minimum of ``key`` (N
    or D) with its interval, and the exponent's line through them. Returns the notes of what could
    not be drawn."""
    if not levels:
        return [f"approach 2 (IsoFLOP profiles): {iso.get('reason') or 'no level with a minimum'}"]
    Cm = np.array([float(lv["C"]) for lv in levels])
    if key == "N":
        ym = np.array([float(lv["N_opt"]) for lv in levels])
        cis = [lv.get("N_opt_ci") for lv in levels]
    else:
        ym = np.array([float(lv["D_opt"]) if lv.get("D_opt") is not None else float(lv["C"]) / (6 * lv["N_opt"])
                       for lv in levels])
        # on a level D = C / (6 N): the interval of N_opt, turned over
        cis = [lv.get("D_opt_ci") or ([float(lv["C"]) / (6 * ci[1]), float(lv["C"]) / (6 * ci[0])]
                                      if (ci := lv.get("N_opt_ci")) and None not in ci else None)
               for lv in levels]
    err = np.array([[max(y - ci[0], 0), max(ci[1] - y, 0)] if ci and None not in ci else [0.0, 0.0]
                    for y, ci in zip(ym, cis)]).T
    eb = ax.errorbar(Cm, ym, yerr=err, fmt="o", ms=7, color="C3", mfc="white", mec="C3", mew=1.5,
                     elinewidth=1.2, capsize=3, zorder=5,
                     label=f"approach 2: minimum of each IsoFLOP profile ± {pct2} interval")
    eb.lines[0].set_gid(f"approach2:{key}")
    e2 = iso.get(exp_name)
    if e2 is not None and len(Cm) >= 2:
        # the exponent's line, through the minima (their mean in log-log)
        k = float(np.mean(np.log(ym) - e2 * np.log(Cm)))
        Cl = np.geomspace(Cm.min() / 1.5, Cm.max() * 1.5, 50)
        ax.plot(Cl, np.exp(k) * Cl**e2, color="C3", lw=1.3, ls="--", zorder=3, gid=f"approach2_fit:{key}",
                label=f"approach 2 (IsoFLOP minima): ${opt}{{\\propto}}C^{exp_name}$, {exp_name} = "
                      f"{_value_ci(e2, iso.get(f'{exp_name}_ci'))}")
        return []
    return [f"approach 2 (IsoFLOP minima): {exp_name} not measured"
            + (f": {iso['reason']}" if iso.get("reason") else "")]


def _draw_frontier(table: pd.DataFrame, grid: Mapping) -> Figure:
    """:func:`plot_frontier`'s figure: axes 0 ``N_opt(C)``, axes 1 ``D_opt(C)``."""
    _require(table, ["params", "tokens_seen"], "grid table")
    fig = Figure(figsize=(13.0, 6.8), layout="constrained")
    axes = fig.subplots(1, 2)
    a3 = _grid_part(grid, "approach3")
    iso = _grid_part(grid, "isoflop")
    pct = f"{100 * a3.get('ci_level', 0.95):g} %"
    pct2 = f"{100 * (iso.get('ci_level') or a3.get('ci_level') or 0.95):g} %"
    N = table["params"].to_numpy(dtype=float)
    D = table["tokens_seen"].to_numpy(dtype=float)
    C_runs = 6 * N * D
    levels = [lv for lv in iso.get("levels") or [] if lv.get("C") and lv.get("N_opt") is not None]
    C_min = [float(lv["C"]) for lv in levels]
    C_all = np.concatenate([C_runs, C_min]) if len(C_runs) or C_min else np.array([1.0, 10.0])
    n_cells = len(set(zip(N, D)))
    for ax, key, exp_name, what, values in ((axes[0], "N", "a", "parameters", N), (axes[1], "D", "b", "tokens", D)):
        ax.set_xscale("log")
        ax.set_yscale("log")
        if len(values):
            ax.scatter(C_runs, values, s=14, color="0.78", edgecolors="none", zorder=1, gid=f"runs:{key}",
                       label=f"grid runs ({len(values)} runs, {n_cells} cells): {key} against 6ND")
        opt = f"{key}_{{opt}}"
        notes = _frontier_approach3(ax, key, exp_name, opt, a3, C_all, pct)
        notes += _frontier_approach2(ax, key, exp_name, opt, iso, levels, pct2)
        ax.set_xlabel("compute C = 6ND (FLOPs)")
        _flops_axis(ax)
        ax.set_ylabel(f"compute-optimal {what} ${opt}$")
        ax.set_title(f"Compute-optimal {what} vs compute", fontsize=11)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _human(v)))
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
        _notes(ax, notes)
        _below_legend(ax)
    return fig


def plot_frontier(table: pd.DataFrame, grid: Mapping, out: str | os.PathLike) -> None:
    """The compute-optimal allocation: ``N_opt`` (left) and ``D_opt`` (right) against C = 6ND.

    Approach 3's frontier (black line, ``N_opt = G (C/6)^a``, ``D_opt = (C/6)^b / G``, from
    ``grid["approach3"]["frontier"]``, with its bootstrap band; computed from ``a, b, G`` when
    the frontier is absent), approach 2's minimum of each IsoFLOP profile with its interval (red
    circles; the D interval is N's turned over, D = C / 6N on a level) and a dashed line of
    approach 2's exponent through them, over every run of the grid (grey: its N or D against its
    6ND). The legends give a and b of both approaches with their intervals; what cannot be drawn
    (an exponent not identified, no IsoFLOP levels) is written in the panel with the reason.

    Args:
        table: The grid's runs, with ``params`` and ``tokens_seen``.
        grid: The grid rule's dict (``approach3``, ``isoflop``).
        out: PNG path.
    """
    _save(_draw_frontier(table, grid), out)


def _holdout_mask(table: pd.DataFrame, holdout: Mapping) -> np.ndarray:
    """The runs of the held-out cell: the cell nearest ``(N, D)``, within 10 % of each."""
    mask = np.zeros(len(table), dtype=bool)
    N, D = holdout.get("N"), holdout.get("D")
    if N is None or D is None or not len(table):
        return mask
    budget = table["budget"].astype(str) if "budget" in table else table["tokens_seen"].map(_human)
    keys = table["size"].astype(str) + "|" + budget
    cells = table.groupby(keys, sort=False).agg(N=("params", "median"), D=("tokens_seen", "median"))
    dist = np.maximum(np.abs(np.log(cells["N"] / float(N))), np.abs(np.log(cells["D"] / float(D))))
    if dist.min() < math.log(1.1):
        mask = (keys == dist.idxmin()).to_numpy()
    return mask


def _draw_holdout(ax, table: pd.DataFrame, held: np.ndarray, h: Mapping, colours: dict) -> tuple[list, list]:
    """The held-out corner in :func:`_draw_loss_tokens`: its runs, their mean (not fitted) and the
    prediction of the fit without it, with the verdict in the legend. Returns the losses drawn and
    the notes of what could not be drawn."""
    values, notes = [], []
    observed = h.get("observed")
    if isinstance(observed, (list, tuple, np.ndarray)):
        observed = float(np.exp(np.mean(np.log(np.asarray(observed, dtype=float))))) if len(observed) else None
    if observed is not None and h.get("D") is not None:
        Dh = float(h["D"])
        size = table.loc[held, "size"].iloc[0] if held.any() else None
        colour = colours.get(size, "black")
        if held.any():
            ax.scatter(table.loc[held, "tokens_seen"], table.loc[held, "val_loss"], s=22, marker="D",
                       facecolors="none", edgecolors=colour, linewidths=1.0, zorder=6, gid="holdout:runs")
        elif h.get("runs") and all(isinstance(v, (int, float)) for v in h["runs"]):
            ax.scatter([Dh] * len(h["runs"]), h["runs"], s=22, marker="D", facecolors="none", edgecolors=colour,
                       linewidths=1.0, zorder=6, gid="holdout:runs")
            values.extend(float(v) for v in h["runs"])
        cell = h.get("cell") or (f"{size}" if size else "")
        n_runs = h.get("n_runs") or int(held.sum())
        label = (f"held-out corner {cell} (N = {_human(float(h.get('N') or 0))}, D = {_human(Dh)}): "
                 f"mean of its {runs_text(n_runs)}, not fitted")
        verdict = h.get("verdict") or (f"no verdict: {h['reason']}" if h.get("reason") else None)
        label = textwrap.fill(label, 80, subsequent_indent="    ")
        if verdict:
            label += "\n" + textwrap.fill(f"verdict: {verdict}", 80, subsequent_indent="    ", break_on_hyphens=False)
        ax.plot([Dh], [observed], ls="", marker="D", ms=11, mfc="none", mec="black", mew=1.8, zorder=8,
                gid="holdout:observed", label=label)
        values.append(observed)
        pred, pi = h.get("predicted"), h.get("pi")
        if pred is not None:
            yerr = [[pred - pi[0]], [pi[1] - pred]] if pi and None not in pi else None
            pct = f"{100 * h.get('ci_level', 0.95):g} %"
            eb = ax.errorbar(Dh * 1.07, pred, yerr=yerr, fmt="s", ms=6, color="C3", mfc="white", elinewidth=2.0,
                             capsize=4, zorder=7,
                             label="its prediction by the fit without it"
                                   + (f", {pct} prediction interval" if yerr else ""))
            eb.lines[0].set_gid("holdout:predicted")
            values.extend([pred, *(pi if pi and None not in pi else [])])
    elif h.get("reason"):
        notes.append(f"held-out corner: {h['reason']}")
    return values, notes


def _draw_loss_tokens(table: pd.DataFrame, grid: Mapping) -> Figure:
    """:func:`plot_loss_tokens`'s figure."""
    from astropt.chinchilla import predict

    _require(table, ["size", "params", "tokens_seen", "val_loss"], "grid table")
    fig = Figure(figsize=(8.0, 7.6), layout="constrained")
    ax = fig.subplots()
    ax.set_xscale("log")
    ax.set_yscale("log")
    a3 = _grid_part(grid, "approach3")
    h = _grid_part(grid, "holdout")
    colours = _size_colours(_sizes_by_params(table))
    held = _holdout_mask(table, h)
    rest = table[~held]
    notes, values = [], list(table["val_loss"].astype(float))
    ax.scatter(rest["tokens_seen"], rest["val_loss"], s=10, c=[colours[s] for s in rest["size"]], alpha=0.6,
               edgecolors="none", zorder=3, gid="runs")
    budget = rest["budget"].astype(str) if "budget" in rest else rest["tokens_seen"].map(_human)
    logs = rest.assign(_cell=budget, _logL=np.log(rest["val_loss"].astype(float)),
                       _logD=np.log(rest["tokens_seen"].astype(float)))
    sizes = list(colours)
    for size in sizes:
        cells = logs[logs["size"] == size].groupby("_cell", sort=False)[["_logD", "_logL"]].mean().sort_values("_logD")
        if len(cells):
            ax.plot(np.exp(cells["_logD"]), np.exp(cells["_logL"]), ls="", marker="o", ms=7, mfc=colours[size],
                    mec="black", mew=0.8, zorder=5, gid=f"means:{size}")
        n = float(table.loc[table["size"] == size, "params"].median())
        ax.plot([], [], color=colours[size], marker="o", mec="black", ms=6, lw=1.4, label=f"{size} (N = {_human(n)})")
    ax.plot([], [], ls="", marker=".", ms=6, color="0.4", label="final validation loss of one run")
    ax.plot([], [], ls="", marker="o", ms=6, mfc="white", mec="black", label="cell mean (geometric) of its runs")
    D_all = table["tokens_seen"].to_numpy(dtype=float)
    if h.get("D") is not None:
        D_all = np.append(D_all, float(h["D"]))
    law = ("E", "A", "B", "alpha", "beta")
    missing = [k for k in law if a3.get(k) is None]
    if missing:
        notes.append(f"approach 3 (fit of L(N, D)) not drawn: {_unidentified(a3, *missing)}")
    elif len(D_all):
        Dg = np.geomspace(D_all.min() / 1.25, D_all.max() * 1.25, 200)
        for size in sizes:
            n = float(table.loc[table["size"] == size, "params"].median())
            ax.plot(Dg, predict(a3, n, Dg), color=colours[size], lw=1.4, zorder=2, gid=f"approach3:{size}")
        ax.plot([], [], color="black", lw=1.4,
                label=textwrap.fill(f"approach 3: L = E + A/N$^\\alpha$ + B/D$^\\beta$ at each size's N; "
                                    f"α = {_value_ci(a3['alpha'], a3.get('alpha_ci'))}, "
                                    f"β = {_value_ci(a3['beta'], a3.get('beta_ci'))}, "
                                    f"E = {_value_ci(a3['E'], a3.get('E_ci'))}", 80, subsequent_indent="    "))
    held_values, held_notes = _draw_holdout(ax, table, held, h, colours)
    values.extend(held_values)
    notes.extend(held_notes)
    ax.set_title(f"Final validation loss vs training tokens, per model size ({len(table)} runs)", fontsize=11)
    ax.set_xlabel("training tokens D (tokens seen)")
    ax.set_ylabel("validation loss")
    if values:
        _loss_limits(ax, np.asarray(values, dtype=float), None)
    _size_axis(ax)
    _notes(ax, notes)
    _below_legend(ax)
    return fig


def plot_loss_tokens(table: pd.DataFrame, grid: Mapping, out: str | os.PathLike) -> None:
    """Final validation loss against training tokens D, one colour per model size N.

    Each run is a small dot and each (N, D) cell's geometric mean a circle, in its size's
    colour; the lines are approach 3's fitted law ``L = E + A/N^alpha + B/D^beta`` at each
    size's N (:func:`astropt.chinchilla.predict`). The held-out corner is drawn apart: its runs
    as open diamonds, their mean as a large open diamond (not fitted), and beside it the
    prediction of the fit without it with its prediction interval; the legend gives the verdict.
    What cannot be drawn (the law not identified, no held-out test) is written in the panel.

    Args:
        table: The grid's runs: ``size``, ``params``, ``tokens_seen``, ``val_loss`` (and
            ``budget``, the cell's token budget).
        grid: The grid rule's dict (``approach3``, ``holdout``).
        out: PNG path.
    """
    _save(_draw_loss_tokens(table, grid), out)


# The figure stages: what the workflow's figure_* rules call (paths in, PNG out).


def figure_scaling(fit_path, table_path, metrics_paths, out, log=print) -> None:
    """The scaling figure: every run's final validation loss against parameters and against
    training compute with the fits of ``fit.json`` (bootstrap band, held-out size), and each
    run's validation curve against cumulative FLOPs from its ``metrics.csv``."""
    fit = json.loads(Path(fit_path).read_text())
    metrics = {"{}/seed{}".format(*run_name(p)): pd.read_csv(p) for p in metrics_paths}
    table = pd.read_csv(table_path)
    if "default_budget" in table:  # the grid's other budgets are drawn by figure_grid
        table = table[table["default_budget"]].reset_index(drop=True)
    plot_scaling(table, fit, out, metrics=metrics)
    log(f"wrote {out}")


def figure_grid(fit_path, table_path, out_isoflop, out_frontier, out_loss_tokens, log=print) -> None:
    """The N x D grid's figures from ``fit.json``'s ``grid`` section and every run of
    ``losses.csv``: IsoFLOP profiles, the compute-optimal frontier, loss against tokens."""
    fit = json.loads(Path(fit_path).read_text())
    grid = fit.get("grid") or {"reason": "train.budgets lists one budget: there is no N x D grid"}
    table = pd.read_csv(table_path)
    for plot, out in ((plot_isoflop, out_isoflop), (plot_frontier, out_frontier), (plot_loss_tokens, out_loss_tokens)):
        plot(table, grid, out)
        log(f"wrote {out}")


def figure_loss_curves(metrics_paths, sidecars, out, log=print) -> None:
    """Training and validation loss curves of every size (``results/models/{size}/metrics.csv``),
    smallest model first."""
    from astropt.runs import load_sidecars

    runs = load_sidecars(sidecars)
    order = [f"{r.size}/seed{r.seed}" for r in runs.itertuples()]
    by_run = {"{}/seed{}".format(*run_name(p)): p for p in metrics_paths}
    unknown = sorted(set(by_run) - set(order))
    if unknown:
        raise ValueError(f"metrics of runs {unknown} have no ckpt.json sidecar among {list(sidecars)}")
    curves = {name: pd.read_csv(by_run[name]) for name in order if name in by_run}
    plot_loss_curves(curves, out)
    log(f"wrote {out}: loss curves of {len(curves)} runs ({', '.join(curves)})")


def figure_downstream(summary_csv, out, log=print) -> None:
    """The paper's downstream figure (:func:`plot_downstream`) from ``results/probes/summary.csv``
    (:func:`astropt.probe.downstream_summary`)."""
    plot_downstream(pd.read_csv(summary_csv), out)
    log(f"wrote {out} from {summary_csv}")


def _panel_title(column: str) -> str:
    """A UMAP panel's title: the paper's label over the column name (M_g, then
    mag_abs_g_photoz on a second line) for the paper's properties, else the column name."""
    from astropt.probe import PAPER_PROPERTIES

    label = PAPER_PROPERTIES.get(column, column)
    return column if label == column else f"{label}\n({column})"


def umap_properties(setting, meta_columns, probe_csv) -> tuple[dict[str, str], list[str]]:
    """The UMAP panels: ``{column: panel title}`` and the paper's properties the catalogue lacks.

    ``setting`` is ``umap.properties``: ``"paper"`` (the paper's twelve, :data:`PAPER_PROPERTIES`,
    those in the catalogue), ``"probed"`` or None (every property in ``probe_csv``) or a list of
    columns (each must be in the catalogue).
    """
    from astropt.probe import PAPER_PROPERTIES

    columns = set(meta_columns)
    if setting == "paper":
        kept = {c: _panel_title(c) for c in PAPER_PROPERTIES if c in columns}
        lacking = [c for c in PAPER_PROPERTIES if c not in columns]
        if not kept:
            raise ValueError(
                f"config key 'umap.properties': the catalogue has none of the paper's properties "
                f"{list(PAPER_PROPERTIES)}; list columns to map instead"
            )
        return kept, lacking
    if setting is None or setting == "probed":
        props = pd.read_csv(probe_csv)["property"].unique().tolist()
    else:
        props = list(setting)
    missing = [p for p in props if p not in columns]
    if missing:
        raise ValueError(f"config key 'umap.properties': {missing} not in the catalogue")
    return {p: _panel_title(p) for p in props}, []


def figure_umap(embeddings, probe_csv, metadata, out, umap_cfg: dict, seed: int, title: str = "", log=print) -> None:
    """UMAP of one size's embeddings as hexbin panels coloured by property (by default the
    paper's twelve, :func:`umap_properties`)."""
    from astropt.embed import read_embeddings
    from astropt.probe import read_metadata

    ids, X = read_embeddings(embeddings)
    meta = read_metadata(metadata).set_index("id")
    panels, lacking = umap_properties(umap_cfg["properties"], meta.columns, probe_csv)
    props = list(panels)
    if lacking:
        log(f"the catalogue {metadata} lacks {len(lacking)} of the paper's properties: {', '.join(lacking)}")
        from astropt.probe import PAPER_PROPERTIES

        missing = "not in the catalogue: " + ", ".join(PAPER_PROPERTIES[c] for c in lacking)  # short labels
        title = f"{title}\n({missing})" if title else missing
    if len(ids) > umap_cfg["max_points"]:
        keep = np.sort(np.random.default_rng(seed).choice(len(ids), umap_cfg["max_points"], replace=False))
        ids, X = ids[keep], X[keep]
    log(f"UMAP of {len(ids):,} embeddings ({X.shape[1]} dims), n_neighbors={umap_cfg['n_neighbors']}")
    coords = umap_embedding(X, seed=seed, n_neighbors=umap_cfg["n_neighbors"])
    values = meta.loc[list(ids), props].reset_index(drop=True).rename(columns=panels)
    plot_umap(coords, values, out, title=title)
    log(f"wrote {out}")


def figure_examples(token_dir, metadata, out, n: int = 16, seed: int = 0, log=print) -> None:
    """A grid of example galaxies of a split, rebuilt from their tokens (so it shows exactly
    what the models see, for any source), captioned with a few truths."""
    from astropt.probe import read_metadata
    from astropt.patches import tokens_to_image
    from astropt.shards import load_tokens

    split = load_tokens(token_dir)
    meta = read_metadata(metadata).set_index("id").loc[list(split.ids)].reset_index()
    wanted = ("mag_r_desi", "redshift", "est_petro_th50")
    columns = tuple(c for c in wanted if c in meta.columns)
    patch, n_chan = split.meta["patch_size"], split.meta["n_chan"]
    plot_examples(lambda row: tokens_to_image(np.asarray(split.tokens[row]), patch, n_chan), meta, out, n=n, columns=columns, seed=seed)
    log(f"wrote {out}: {min(n, len(meta))} galaxies of {token_dir}")
