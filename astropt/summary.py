"""The study's headline numbers in a few lines: ``results/summary.md`` (and ``.html`` for the report).

Everything here is read from files other rules wrote; no number is typed by hand, and each
section ends with the files (and the rules that made them) its numbers come from:

- the models: ``results/models/{size}/ckpt.json`` (rule ``train``, or ``released_model``);
- the scaling fits: ``results/scaling/fit.json`` (rule ``scaling``, :mod:`astropt.scaling`);
- the probes: ``results/probes/{size}.csv`` (rule ``probe``, :mod:`astropt.probe`) and
  ``results/probes/summary.csv`` (rule ``figure_downstream``).

The document is a list of blocks (heading, paragraph, bullet list, table) rendered twice by
the same code: as Markdown (:func:`to_markdown`) and as a standalone HTML page
(:func:`to_html`), which ``snakemake --report`` shows beside the figures.

Example::

    blocks = build_summary(losses, fit, probe_tables, downstream, context)
    Path("results/summary.md").write_text(to_markdown(blocks))
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: Where each kind of number comes from: (file, rules that write it).
SOURCES = {
    "models": ("results/models/{size}/ckpt.json", "train` or `released_model"),
    "fit": ("results/scaling/fit.json", "scaling"),
    "probes": ("results/probes/{size}.csv", "probe"),
    "downstream": ("results/probes/summary.csv", "figure_downstream"),
}


@dataclass
class Block:
    """One piece of the document.

    Attributes:
        kind: ``"h1"``, ``"h2"``, ``"p"`` (a paragraph), ``"ul"`` (``items``) or ``"table"``
            (``header`` and ``rows``, all strings).
        text: The heading or paragraph text.
        items: Bullet lines.
        header: Table column names.
        rows: Table rows.
    """

    kind: str
    text: str = ""
    items: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


# --------------------------------------------------------------------------- number formats


def fmt(value, digits: int = 3) -> str:
    """A number to ``digits`` significant figures; ``n/a`` for None / NaN."""
    if value is None:
        return "n/a"
    value = float(value)
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}"


def fmt_count(n) -> str:
    """A large count in words: 416,064 -> '416K', 3.3e12 -> '3.3T'."""
    if n is None or not math.isfinite(float(n)):
        return "n/a"
    n = float(n)
    for div, unit in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def fmt_ci(value, low, high, digits: int = 3) -> str:
    """``value [low, high]``, or the value alone when the interval is missing."""
    if low is None or high is None or not (math.isfinite(float(low)) and math.isfinite(float(high))):
        return fmt(value, digits)
    return f"{fmt(value, digits)} [{fmt(low, digits)}, {fmt(high, digits)}]"


def _rho(rho, p) -> str:
    if rho is None or not math.isfinite(float(rho)):
        return "n/a"
    return f"{float(rho):+.2f} (p = {float(p):.2g})"


# --------------------------------------------------------------------------- the document


def _model_section(losses: pd.DataFrame) -> list[Block]:
    rows = []
    for r in losses.itertuples():
        rows.append([
            str(r.size), f"{int(r.params):,}", fmt_count(r.tokens_seen), fmt_count(r.flops),
            fmt(r.val_loss, 4), fmt(r.best_val_loss, 4),
            fmt(r.gpu_hours, 3) if r.gpu_hours > 0 else "-",  # NaN (not recorded) or 0 (CPU)
            fmt(r.elapsed_s / 3600, 3),
        ])
    return [
        Block("h2", "Models"),
        Block("table", header=["size", "parameters", "tokens seen", "training FLOPs", "final val. loss",
                               "best val. loss", "GPU-hours", "wall hours"], rows=rows),
        _from("models"),
    ]


def constrained(law: Mapping) -> bool:
    """Whether a fitted law pins its exponent down: fitted, not degenerate, and alpha's interval
    ends inside the search bounds (an end at a bound means the points set no limit there)."""
    if not law or law.get("alpha") is None or law.get("degenerate"):
        return False
    if law.get("alpha_ci") is None:  # no interval (no degrees of freedom left)
        return False
    open_ends = (law.get("ci_open") or {}).get("alpha") or [False, False]
    return not any(open_ends)


def _fit_line(name: str, fit: Mapping | None, variable: str) -> str:
    """One line per fitted variable: the saturating law (or why it is degenerate) and the power law."""
    if not fit or "saturating" not in fit:
        why = (fit or {}).get("error", "no fit")
        return f"vs {name}: {why}"
    sat, pl = fit["saturating"], fit.get("power_law", {})
    level = fit.get("ci_level", 0.95)
    pct = f"{100 * level:.0f} %"

    def with_ci(params: Mapping, key: str) -> str:
        ci = params.get(f"{key}_ci") or [None, None]
        err = params.get(f"{key}_err")
        text = fmt(params.get(key))
        if err is not None and math.isfinite(float(err)):
            text += f" ± {fmt(err, 2)}"
        if ci[0] is not None and ci[1] is not None:
            text += f" ({pct} CI {fmt(ci[0])} to {fmt(ci[1])})"
        return text

    parts = []
    if sat.get("alpha") is not None:
        s = f"saturating L = L_inf + ({variable}_c/{variable})^alpha: alpha = {with_ci(sat, 'alpha')}, L_inf = {with_ci(sat, 'L_inf')}"
        if sat.get("degenerate"):
            s += f" (degenerate: {sat.get('reason', '')})"
        parts.append(s)
    else:
        parts.append(f"saturating law not fitted ({sat.get('reason', 'no reason given')})")
    if pl.get("alpha") is not None:
        parts.append(f"power law ({variable}_c/{variable})^alpha: alpha = {with_ci(pl, 'alpha')}")
    return f"vs {name}: " + "; ".join(parts)


def _fit_section(fit: Mapping, fit_table: Sequence | None) -> list[Block]:
    blocks = [Block("h2", "Scaling laws")]
    if fit_table is None:  # no table given: a line per fitted variable
        blocks.append(Block("ul", items=[_fit_line("parameters N", fit.get("params"), "N"),
                                         _fit_line("training compute C (FLOPs)", fit.get("compute"), "C")]))
    else:
        header, rows, *notes = fit_table
        blocks.append(Block("table", header=list(header), rows=[list(r) for r in rows]))
        for i, note in enumerate(notes[0] if notes else [], start=1):
            blocks.append(Block("p", f"({i}) {note}"))
        key = f"Each entry: value ± standard error [{100 * fit.get('ci_level', 0.95):g} % interval]"
        if any("†" in cell for row in rows for cell in row):
            key += "; † marks an interval end at a bound of the fit's search: the points set no limit there"
        blocks.append(Block("p", key + "."))
    blocks.append(_from("fit"))
    return blocks


def _probe_rows(largest: pd.DataFrame, downstream: pd.DataFrame, protocol: str, metric: str) -> list[list[str]]:
    rows = []
    mine = largest[(largest["protocol"] == protocol) & (largest["metric"] == metric)]
    for r in mine.itertuples():
        d = downstream[(downstream["property"] == r.property) & (downstream["protocol"] == protocol)
                       & (downstream["metric"] == metric)]
        rel = d["relative"].iloc[-1] if len(d) else float("nan")
        rho = _rho(d["spearman_rho"].iloc[0], d["spearman_p"].iloc[0]) if len(d) else "n/a"
        rows.append([str(r.property), f"{int(r.n):,}", fmt_ci(r.value, r.ci_low, r.ci_high), fmt(rel), rho])
    return rows


def improving(downstream: pd.DataFrame, protocol: str, metric: str) -> tuple[int, int, float]:
    """How many properties score better with model size under one protocol and metric.

    Returns:
        ``(improving, scored, median rho)``: properties whose Spearman rho between size and
        score points the better way (rho > 0 where higher is better, < 0 otherwise), the
        properties with a finite rho, and the median of rho signed so that positive is better.
    """
    d = downstream[(downstream["protocol"] == protocol) & (downstream["metric"] == metric)]
    per_prop = d.groupby("property", sort=False).agg(rho=("spearman_rho", "first"), hib=("higher_is_better", "first"))
    per_prop = per_prop[np.isfinite(per_prop["rho"].astype(float))]
    if per_prop.empty:
        return 0, 0, float("nan")
    signed = per_prop["rho"].astype(float) * np.where(per_prop["hib"].astype(bool), 1.0, -1.0)
    return int((signed > 0).sum()), len(per_prop), float(np.median(signed))


_TITLES = {
    ("paper", "median_abs_error"): "Paper protocol: median absolute error (IQR units, lower is better)",
    ("ridge_cv", "r2"): "Ridge regression, k-fold: R² (higher is better)",
    ("logistic_cv", "roc_auc"): "Logistic regression of flags, k-fold: ROC AUC (higher is better)",
}


def _probe_section(size: str, largest: pd.DataFrame, downstream: pd.DataFrame, smallest: str) -> list[Block]:
    blocks = [Block("h2", f"Probes of the {size} embeddings"),
              Block("p", f"Scores with bootstrap 95 % intervals; 'relative' is the score divided by the "
                         f"{smallest} model's; rho is Spearman's between model size and score.")]
    for (protocol, metric), title in _TITLES.items():
        rows = _probe_rows(largest, downstream, protocol, metric)
        if rows:
            blocks.append(Block("p", f"**{title}**"))
            blocks.append(Block("table", header=["property", "galaxies", f"{size} score [95 % CI]",
                                                 f"relative to {smallest}", "rho (p)"], rows=rows))
    blocks.append(_from("probes", "downstream"))
    return blocks


def _from(*keys: str) -> Block:
    parts = [f"`{SOURCES[k][0]}` (rule{'s' if '`' in SOURCES[k][1] else ''} `{SOURCES[k][1]}`)" for k in keys]
    return Block("p", "From " + " and ".join(parts) + ".")


def build_summary(
    losses: pd.DataFrame,
    fit: Mapping,
    probes: Mapping[str, pd.DataFrame],
    downstream: pd.DataFrame,
    context: Mapping[str, str] | None = None,
    fit_table: Sequence | None = None,
) -> list[Block]:
    """The summary document.

    Args:
        losses: One row per size (:func:`astropt.pipeline.load_sidecars`): size, params,
            val_loss, best_val_loss, flops, tokens_seen, elapsed_s, gpu_hours; sorted by params.
        fit: ``results/scaling/fit.json``: ``{"params": fit, "compute": fit, ...}``
            (:mod:`astropt.scaling`).
        probes: Size -> its long probe table (``astropt.probe.PROBE_COLUMNS``).
        downstream: ``results/probes/summary.csv`` (``astropt.figures.downstream_table``).
        context: Lines describing the run (data, models), shown first.
        fit_table: Optional ``(header, rows[, notes])`` of the fitted parameters
            (:func:`astropt.scaling.table_cells`), shown under the fits.

    Returns:
        Blocks for :func:`to_markdown` / :func:`to_html`.
    """
    if losses.empty:
        raise ValueError("no trained sizes to summarise (no ckpt.json sidecars)")
    losses = losses.sort_values("params", ignore_index=True)
    small, large = losses.iloc[0], losses.iloc[-1]
    if str(large["size"]) not in probes:
        raise ValueError(f"no probe table for the largest size {large['size']!r}; have {sorted(probes)}")
    largest = probes[str(large["size"])]

    head = []
    if len(losses) > 1:
        head.append(
            f"Final validation loss: {fmt(small.val_loss, 4)} ({small['size']}) to {fmt(large.val_loss, 4)} "
            f"({large['size']}) over {len(losses)} sizes, {fmt_count(small.params)} to {fmt_count(large.params)} "
            f"parameters ({fmt(large.params / small.params, 3)}x)."
        )
    else:
        head.append(f"Final validation loss of {large['size']}: {fmt(large.val_loss, 4)} (one size: no scaling fit).")
    for name, key, var in (("parameters", "params", "N"), ("compute", "compute", "C")):
        entry = fit.get(key) or {}
        sat, pl = entry.get("saturating") or {}, entry.get("power_law") or {}
        if sat.get("alpha") is None and pl.get("alpha") is None:
            continue
        line = f"Loss vs {name}: "
        if constrained(sat):
            line += f"saturating alpha = {fmt(sat['alpha'])} ± {fmt(sat.get('alpha_err'), 2)}, L_inf = {fmt(sat.get('L_inf'), 4)}"
            if pl.get("alpha") is not None:
                line += f"; plain power law alpha = {fmt(pl['alpha'])} ± {fmt(pl.get('alpha_err'), 2)}"
        elif pl.get("alpha") is not None:
            line += f"plain power law alpha = {fmt(pl['alpha'])} ± {fmt(pl.get('alpha_err'), 2)}"
            if sat:
                why = "degenerate" if sat.get("degenerate") else "its 95 % interval of alpha reaches the fit's bounds"
                line += f" (the saturating law is not constrained by these points: {why})"
        head.append(line + ".")
    for protocol, metric, what in (("ridge_cv", "r2", "ridge R²"), ("paper", "median_abs_error", "paper-protocol error"),
                                   ("logistic_cv", "roc_auc", "flag ROC AUC")):
        up, n, med = improving(downstream, protocol, metric)
        if n and len(losses) > 1:
            head.append(f"{what}: {up} of {n} properties improve with model size (median Spearman rho {med:+.2f}, "
                        f"signed so that positive is better).")
    ridge = largest[(largest["protocol"] == "ridge_cv") & (largest["metric"] == "r2")].dropna(subset=["value"])
    if len(ridge):
        best = ridge.sort_values("value", ascending=False)
        top = ", ".join(f"{r.property} {fmt(r.value)}" for r in best.head(3).itertuples())
        head.append(f"Best-predicted properties ({large['size']}, ridge R²): {top}; median over "
                    f"{len(ridge)} properties {fmt(ridge['value'].median())}.")
    gpu, wall = losses["gpu_hours"].fillna(0).sum(), losses["elapsed_s"]
    if gpu > 0:
        cost = f"{fmt(gpu, 3)} GPU-hours"
    elif wall.notna().all():
        cost = f"{fmt(wall.sum() / 3600, 3)} wall-clock hours (no GPU)"
    else:
        cost = "its cost not recorded (released weights)"
    head.append(f"Training compute: {fmt_count(losses['flops'].sum())} FLOPs in all, {cost}.")

    blocks = [Block("h1", "AstroPT scaling study: summary")]
    if context:
        blocks.append(Block("p", " ".join(context.values())))
    blocks += [Block("ul", items=head)]
    blocks += _model_section(losses)
    blocks += _fit_section(fit, fit_table)
    blocks += _probe_section(str(large["size"]), largest, downstream, str(small["size"]))
    return blocks


# --------------------------------------------------------------------------- renderers


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block]) -> str:
    """GitHub-flavoured Markdown of the blocks."""
    out = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {b.text}")
        elif b.kind == "h2":
            out.append(f"## {b.text}")
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "ul":
            out.append("\n".join(f"- {item}" for item in b.items))
        elif b.kind == "table":
            lines = ["| " + " | ".join(_md_cell(h) for h in b.header) + " |",
                     "|" + "|".join("---" for _ in b.header) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("\n".join(lines))
        else:
            raise ValueError(f"unknown block kind {b.kind!r}")
    return "\n\n".join(out) + "\n"


def _inline_html(text: str) -> str:
    """Escape, then turn the Markdown ``**bold**`` and ```code``` the blocks use into tags."""
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


_STYLE = """body{font-family:system-ui,sans-serif;max-width:70em;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left}
th{background:#f3f3f3}td{font-variant-numeric:tabular-nums}code{background:#f3f3f3;padding:0 .2em}"""


def to_html(blocks: Sequence[Block]) -> str:
    """A standalone HTML page of the blocks (no external resources)."""
    body = []
    title = next((b.text for b in blocks if b.kind == "h1"), "summary")
    for b in blocks:
        if b.kind in ("h1", "h2"):
            body.append(f"<{b.kind}>{_inline_html(b.text)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{_inline_html(b.text)}</p>")
        elif b.kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            raise ValueError(f"unknown block kind {b.kind!r}")
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
