"""The study's headline numbers in a few lines: ``results/summary.md`` (and ``.html`` for the report).

Everything here is read from files other rules wrote; no number is typed by hand, and each
section ends with the files (and the rules that made them) its numbers come from:

- the models: ``results/models/{size}/ckpt.json`` (rule ``train``, or ``released_model``);
- the scaling fits: ``results/scaling/fit.json`` (rule ``scaling``, :mod:`astropt.scaling`);
- the probes: ``results/probes/{size}.csv`` (rules ``probe`` and ``probe_size``, :mod:`astropt.probe`) and
  ``results/probes/summary.csv`` (rule ``downstream``).

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

from astropt.io import runs_text

#: Where each kind of number comes from: (file, rules that write it).
SOURCES = {
    "models": ("results/models/{size}/ckpt.json", "train` or `released_model"),
    "fit": ("results/scaling/fit.json", "scaling"),
    "probes": ("results/probes/{size}.csv", "probe` and `probe_size"),
    "downstream": ("results/probes/summary.csv", "downstream"),
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


def size_table(losses: pd.DataFrame) -> pd.DataFrame:
    """One row per size from the runs' table (:func:`astropt.runs.load_sidecars`): its
    runs, their mean final loss (and best loss), between-run sd, min and max, FLOPs per run,
    GPU-hours and wall hours summed over its runs; sorted by parameters."""
    g = losses.groupby("size", sort=False)
    table = g.agg(params=("params", "first"), runs=("val_loss", "size"), val_loss=("val_loss", "mean"),
                  val_sd=("val_loss", "std"), val_min=("val_loss", "min"), val_max=("val_loss", "max"),
                  best_val_loss=("best_val_loss", "mean"), tokens_seen=("tokens_seen", "first"),
                  flops=("flops", "first"), gpu_hours=("gpu_hours", lambda v: v.sum(min_count=1)),
                  elapsed_s=("elapsed_s", lambda v: v.sum(min_count=len(v))))
    return table.reset_index().sort_values("params", ignore_index=True)


def _loss_text(r) -> str:
    """A size's final loss: the mean of its runs, ± their sd when there are several."""
    return fmt(r.val_loss, 4) + (f" ± {fmt(r.val_sd, 2)}" if r.runs > 1 else "")


def _model_section(losses: pd.DataFrame, sizes: pd.DataFrame, several: bool) -> list[Block]:
    rows = []
    for r in sizes.itertuples():
        spread = f"{fmt(r.val_min, 4)} to {fmt(r.val_max, 4)}" if r.runs > 1 else "-"
        rows.append([
            str(r.size), f"{int(r.params):,}", str(r.runs), fmt_count(r.tokens_seen), fmt_count(r.flops),
            _loss_text(r), spread, fmt(r.best_val_loss, 4),
            fmt(r.gpu_hours, 3) if r.gpu_hours > 0 else "-",  # NaN (not recorded) or 0 (CPU)
            fmt(r.elapsed_s / 3600, 3),
        ])
    blocks = [
        Block("h2", "Models"),
        Block("table", header=["size", "parameters", "runs", "tokens seen (per run)", "training FLOPs (per run)",
                               "final val. loss" + (" (mean ± sd of runs)" if several else ""),
                               "runs' range", "best val. loss", "GPU-hours (all runs)", "wall hours (all runs)"],
              rows=rows),
    ]
    if several:
        blocks.append(Block("table", header=["run", "final val. loss", "seed", "threads", "CPU kernels / GPU", "torch"],
                            rows=[[f"{r.size}/seed{r.seed}", fmt(r.val_loss, 5), str(r.seed), _prov(r, "threads"),
                                   _prov(r, "cpu_capability") if _prov(r, "gpu") in ("", "n/a", "None") else _prov(r, "gpu"),
                                   _prov(r, "torch")] for r in losses.itertuples()]))
    blocks.append(_from("models"))
    return blocks


def _prov(row, key: str) -> str:
    value = getattr(row, key, None)
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else str(value)


def _ci(ci) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci and None not in ci else "n/a"


def law_line(name: str, entry: Mapping, n_sizes: int) -> str:
    """The headline sentence of one fit (:func:`astropt.scaling.headline`): the law the runs
    support, quoted only with bounded intervals, else what the data cannot tell."""
    from astropt.scaling import headline

    if not entry or "error" in entry:
        return f"Loss vs {name}: no fit ({(entry or {}).get('error', 'not fitted')})."
    if entry.get("separate_evidence") is False:
        return f"Loss vs {name}: {entry.get('note', 'not separate evidence')}."
    h = headline(entry)
    boot = entry.get("bootstrap") or {}
    pct = f"{100 * entry.get('ci_level', 0.95):g} %"
    where = (f"{pct} bootstrap interval over {entry.get('n_points')} runs of {n_sizes} sizes "
             f"({boot.get('n_resamples')} resamples)" if h["interval"] == "bootstrap" else
             f"{pct} analytic interval, one run per size: run-to-run variance not seen")
    analytic = (entry.get(h["law"]) or {}).get("alpha_ci")
    also = f"; analytic {_ci(analytic)}" if h["interval"] == "bootstrap" and analytic else ""
    if h["quote"]:
        if h["law"] == "saturating":
            text = (f"Loss vs {name}: L = L_inf + (X_c/X)^alpha with alpha = {fmt(h['alpha'])} {_ci(h['alpha_ci'])}, "
                    f"L_inf = {fmt(h['L_inf'], 4)} {_ci(h['L_inf_ci'])} ({where}{also})")
        elif h["excludes_zero"]:
            text = (f"Loss vs {name}: a power law, L ∝ X^-alpha with alpha = {fmt(h['alpha'])} {_ci(h['alpha_ci'])} "
                    f"({where}{also})")
        else:
            text = (f"Loss vs {name}: the data cannot tell whether the loss falls with size: the power law's "
                    f"alpha = {fmt(h['alpha'])} has the interval {_ci(h['alpha_ci'])}, which includes 0 ({where})")
        comparison = entry.get("comparison") or {}
        if h["law"] == "power_law" and comparison.get("f_p") is not None:
            text += (f". A floor L_inf is not supported by these runs (F-test p = {fmt(comparison['f_p'], 2)}): "
                     "where the loss saturates cannot be told")
        return text + "."
    reasons = "; ".join(h["notes"]) or "its intervals are not bounded"
    text = (f"Loss vs {name}: no law is quoted: {reasons}. The best estimate, alpha = {fmt(h['alpha'])} "
            f"({h['law'].replace('_', ' ')}), is not a result")
    pl = entry.get("power_law") or {}
    slope_ci = pl.get("alpha_boot_ci") if h["interval"] == "bootstrap" else pl.get("alpha_ci")
    opened = (pl.get("boot_open") if h["interval"] == "bootstrap" else pl.get("ci_open")) or {}
    if h["law"] != "power_law" and slope_ci and not any(opened.get("alpha", [False, False])):
        text += (f". Over these sizes the loss falls with a log-log slope of {fmt(pl.get('alpha'))} "
                 f"{_ci(slope_ci)} ({where}): a description of this range, not a law to extrapolate")
    return text + "."


def _fit_section(fit: Mapping, fit_table: Sequence | None) -> list[Block]:
    blocks = [Block("h2", "Scaling laws")]
    if fit_table is None:  # no table given: the headline sentence per variable
        blocks.append(Block("ul", items=[law_line("parameters N", fit.get("params") or {}, fit.get("n_sizes", 0)),
                                         law_line("training compute C", fit.get("compute") or {},
                                                  fit.get("n_sizes", 0))]))
    else:
        header, rows, *notes = fit_table
        blocks.append(Block("table", header=list(header), rows=[list(r) for r in rows]))
        for i, note in enumerate(notes[0] if notes else [], start=1):
            blocks.append(Block("p", f"({i}) {note}"))
        key = (f"Each entry: value ± standard error [{100 * fit.get('ci_level', 0.95):g} % analytic interval]; "
               "'bootstrap': the interval from resampling the runs within each size")
        if any("†" in cell for row in rows for cell in row):
            key += "; † marks an interval end at a bound of the fit's search: the points set no limit there"
        blocks.append(Block("p", key + "."))
    params = fit.get("params") or {}
    comparison = params.get("comparison") or {}
    if comparison.get("f_p") is not None:
        aic = comparison.get("aic") or {}
        lof = comparison.get("lack_of_fit") or {}
        tests = [f"saturating vs plain law: F-test p = {fmt(comparison['f_p'], 2)}"
                 + (f", AIC {fmt(aic.get('saturating'), 4)} vs {fmt(aic.get('power_law'), 4)}" if aic else "")
                 + f" (preferred: {params.get('preferred', 'power_law').replace('_', ' ')})"]
        for law, t in lof.items():
            tests.append(f"lack of fit of the {'saturating law' if law == 'saturating' else 'power law'}: "
                         + (f"F = {fmt(t['f_stat'], 3)}, p = {fmt(t['p'], 2)} (df {t['df'][0]}, {t['df'][1]})"
                            if t.get("p") is not None else f"not testable ({t.get('reason')})"))
        blocks.append(Block("p", "Tests on the runs (parameters): " + "; ".join(tests) + "."))
    h = fit.get("holdout") or {}
    if h.get("size") and h.get("verdict"):
        pi_run = h.get("pi_run")
        runs = ", ".join(fmt(v, 4) for v in h.get("observed", []))
        blocks.append(Block("p", f"**Held-out size.** {h['verdict'][0].upper()}{h['verdict'][1:]}. Its runs: {runs}; "
                                 f"{h.get('runs_inside')} of {h.get('n_runs')} inside the interval for one run "
                                 f"{_ci(pi_run)}. Method: {h.get('method', '')}."))
    elif h.get("reason"):
        blocks.append(Block("p", f"**Held-out size.** No test: {h['reason']}."))
    if fit.get("grid"):
        blocks.append(Block("p", _grid_paragraph(fit["grid"])))
    blocks.append(_from("fit"))
    return blocks


def _grid_paragraph(grid: Mapping) -> str:
    """The N x D grid in one paragraph: both approaches' compute-optimal exponents (or why a
    number is missing) and the held-out corner's verdict."""
    three, two = grid.get("approach3") or {}, grid.get("isoflop") or {}

    def exponent(fit: Mapping, key: str, why: str | None) -> str:
        if fit.get(key) is None:
            return f"not identified ({why or fit.get('reason') or 'no estimate'})"
        ci = fit.get(f"{key}_ci")
        if not ci:
            return f"{fmt(fit[key], 2)} (no interval)"
        open_ends = " (an end at the exponent's limit, 0 or 1: the runs set no limit there)" if (
            ci[0] <= 0 or ci[1] >= 1) else ""
        return fmt_ci(fit[key], *ci, digits=2) + open_ends

    unidentified = three.get("unidentified") or {}
    parts = [f"approach 3 (L = E + A/N^alpha + B/D^beta over {three.get('n_runs', 0)} runs): "
             f"N_opt ~ C^a with a = {exponent(three, 'a', unidentified.get('a'))}, "
             f"D_opt ~ C^b with b = {exponent(three, 'b', unidentified.get('b'))}",
             f"approach 2 (IsoFLOP profiles): a = {exponent(two, 'a', two.get('reason'))}"]
    h = grid.get("holdout") or {}
    corner = h.get("verdict") or (f"no test: {h['reason']}" if h.get("reason") else None)
    text = "**N x D grid (Chinchilla).** " + "; ".join(parts) + "."
    if corner:
        text += f" Held-out corner: {corner}."
    return text + " Every parameter, level and interval: `results/scaling/fit.md`."


def _probe_rows(largest: pd.DataFrame, downstream: pd.DataFrame, protocol: str, metric: str) -> list[list[str]]:
    rows = []
    mine = largest[(largest["protocol"] == protocol) & (largest["metric"] == metric)]
    for r in mine.itertuples():
        d = downstream[(downstream["property"] == r.property) & (downstream["protocol"] == protocol)
                       & (downstream["metric"] == metric)]
        rel = d["relative"].iloc[-1] if len(d) else float("nan")
        rho = _rho(d["spearman_rho"].iloc[0], d["spearman_p"].iloc[0]) if len(d) else "n/a"
        agree = d["seeds_agree"].iloc[0] if len(d) and "seeds_agree" in d else float("nan")
        kept = f"{int(r.n):,}"
        n_total = getattr(r, "n_total", r.n)
        if pd.notna(n_total) and n_total > r.n:
            parts = [f"{int(v):,} {what}" for v, what in ((getattr(r, "n_missing", 0), "missing"),
                                                         (getattr(r, "n_clipped", 0), "clipped")) if v]
            kept += f" of {int(n_total):,} ({', '.join(parts)})"
        sd = getattr(r, "run_sd", float("nan"))
        rows.append([str(r.property), kept, fmt_ci(r.value, r.ci_low, r.ci_high),
                     fmt(sd, 2) if pd.notna(sd) else "-", fmt(rel), rho,
                     f"{agree:.0%}" if pd.notna(agree) else "-"])
    return rows


def improving(downstream: pd.DataFrame, protocol: str, metric: str) -> tuple[int, int, float]:
    """How many properties score better with model size under one protocol and metric.

    Returns:
        ``(improving, scored, median rho)``: properties whose Spearman rho between size and
        score (from the run means) points the better way (rho > 0 where higher is better, < 0
        otherwise), the properties with a finite rho, and the median of rho signed so that
        positive is better.
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

#: A clip that drops more than this share of a property's test galaxies is flagged.
CLIP_FLAG = 0.10


def clipped(probes: Mapping[str, pd.DataFrame], share: float = CLIP_FLAG) -> list[tuple[str, str, float]]:
    """Properties whose MAD clip drops more than ``share`` of the galaxies given: ``(property,
    protocol, share dropped)``, from any size's table (the clip depends on the targets only)."""
    out = {}
    for table in probes.values():
        if "n_clipped" not in table:
            continue
        t = table.drop_duplicates(["property", "protocol"])
        for r in t.itertuples():
            total = r.n_total - getattr(r, "n_missing", 0)
            if total > 0 and r.n_clipped / total > share:
                out[(r.property, r.protocol)] = r.n_clipped / total
    return [(p, proto, v) for (p, proto), v in out.items()]


def _probe_section(size: str, largest: pd.DataFrame, downstream: pd.DataFrame, smallest: str, n_runs: int) -> list[Block]:
    over = (f"the mean of its {n_runs} runs with an interval that resamples runs, then galaxies; 'run sd' is the "
            "between-run spread" if n_runs > 1 else "one run, with a bootstrap interval over galaxies")
    blocks = [Block("h2", f"Probes of the {size} embeddings"),
              Block("p", f"Scores: {over}. 'relative' is the score divided by the {smallest} model's; rho is "
                         f"Spearman's between model size and the run means; 'seeds agree' the share of training "
                         f"seeds whose own sweep over sizes gives rho the same sign.")]
    for (protocol, metric), title in _TITLES.items():
        rows = _probe_rows(largest, downstream, protocol, metric)
        if rows:
            blocks.append(Block("p", f"**{title}**"))
            blocks.append(Block("table", header=["property", "galaxies scored", f"{size} score [95 % CI]", "run sd",
                                                 f"relative to {smallest}", "rho (p)", "seeds agree"], rows=rows))
    blocks.append(_from("probes", "downstream"))
    return blocks


def _from(*keys: str) -> Block:
    parts = [f"`{SOURCES[k][0]}` (rule{'s' if '`' in SOURCES[k][1] else ''} `{SOURCES[k][1]}`)" for k in keys]
    return Block("p", "From " + " and ".join(parts) + ".")


def provenance_line(losses: pd.DataFrame) -> str:
    """Where the runs ran: seeds, threads, CPU capability or GPU, torch (from their ckpt.json)."""
    seeds = sorted({int(s) for s in losses["seed"]}) if "seed" in losses else []
    parts = [f"{losses['size'].nunique()} sizes x {len(seeds)} training seed{'s' if len(seeds) != 1 else ''} "
             f"({', '.join(map(str, seeds))})"]
    for col, what in (("data_seed", "data seed"), ("threads", "threads"), ("cpu_capability", "CPU kernels"),
                      ("cpu", "CPU"), ("gpu", "GPU"), ("torch", "torch")):
        if col in losses:
            values = sorted({str(v) for v in losses[col].dropna() if str(v) not in ("", "None")})
            if values:
                parts.append(f"{what} {', '.join(values)}")
    return "Runs: " + "; ".join(parts) + "."


def _improving_lines(downstream: pd.DataFrame) -> list[str]:
    """Per probe kind: how many properties improve with size, and how far the seeds agree."""
    lines = []
    for protocol, metric, what in (("ridge_cv", "r2", "ridge R²"), ("paper", "median_abs_error", "paper-protocol error"),
                                   ("logistic_cv", "roc_auc", "flag ROC AUC")):
        up, n, med = improving(downstream, protocol, metric)
        if n:
            line = (f"{what}: {up} of {n} properties improve with model size (median Spearman rho {med:+.2f} "
                    f"from the run means, signed so that positive is better")
            agree = downstream[(downstream["protocol"] == protocol) & (downstream["metric"] == metric)]
            agree = agree.drop_duplicates("property")["seeds_agree"].dropna() if "seeds_agree" in agree else agree.iloc[:0]
            if len(agree):
                line += f"; the seeds' own sweeps agree in sign for a median {agree.median():.0%} of seeds"
            lines.append(line + ").")
    return lines


def _compute_line(losses: pd.DataFrame) -> str:
    """The training compute of every run, in FLOPs and GPU- or wall-clock hours."""
    gpu, wall = losses["gpu_hours"].fillna(0).sum(), losses["elapsed_s"]
    if gpu > 0:
        cost = f"{fmt(gpu, 3)} GPU-hours"
    elif wall.notna().all():
        cost = f"{fmt(wall.sum() / 3600, 3)} wall-clock hours (no GPU)"
    else:
        cost = "its cost not recorded (released weights)"
    return f"Training compute: {fmt_count(losses['flops'].sum())} FLOPs in all ({runs_text(len(losses))}), {cost}."


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
        losses: One row per run (:func:`astropt.runs.load_sidecars`): size, seed, params,
            val_loss, best_val_loss, flops, tokens_seen, elapsed_s, gpu_hours (and the run's
            provenance: threads, cpu_capability, torch ...).
        fit: ``results/scaling/fit.json`` (:func:`astropt.scaling.fit_study`).
        probes: Size -> its probes over its runs (``astropt.probe.AGGREGATE_COLUMNS``; a single
            run's long table works too).
        downstream: ``results/probes/summary.csv`` (``astropt.probe.downstream_table``).
        context: Lines describing the run (data, models), shown first.
        fit_table: Optional ``(header, rows[, notes])`` of the fitted parameters
            (:func:`astropt.tables.table_cells`), shown under the fits.

    Returns:
        Blocks for :func:`to_markdown` / :func:`to_html`.
    """
    if losses.empty:
        raise ValueError("no trained runs to summarise (no ckpt.json sidecars)")
    sizes = size_table(losses)
    small, large = sizes.iloc[0], sizes.iloc[-1]
    if str(large["size"]) not in probes:
        raise ValueError(f"no probe table for the largest size {large['size']!r}; have {sorted(probes)}")
    largest = probes[str(large["size"])]
    n_sizes = len(sizes)
    head = [provenance_line(losses)]
    several = sizes["runs"].max() > 1
    if n_sizes > 1:
        head.append(
            f"Final validation loss{' (mean ± sd of runs)' if several else ''}: {_loss_text(small)} ({small['size']}) "
            f"to {_loss_text(large)} ({large['size']}) over {n_sizes} sizes, {fmt_count(small.params)} to "
            f"{fmt_count(large.params)} parameters ({fmt(large.params / small.params, 3)}x)."
        )
    else:
        head.append(f"Final validation loss of {large['size']}: {_loss_text(large)} (one size: no scaling fit).")
    if n_sizes > 1:
        head.append(law_line("parameters", fit.get("params") or {}, n_sizes))
        head.append(law_line("compute", fit.get("compute") or {}, n_sizes))
    h = fit.get("holdout") or {}
    if h.get("verdict"):
        head.append(f"Held-out size: {h['verdict']}.")
    if n_sizes > 1:
        head += _improving_lines(downstream)
    for prop, protocol, share in clipped(probes):
        head.append(f"The {protocol} protocol's MAD clip drops {share:.0%} of the galaxies with a finite "
                    f"{prop}: its {protocol} score describes the rest only.")
    ridge = largest[(largest["protocol"] == "ridge_cv") & (largest["metric"] == "r2")].dropna(subset=["value"])
    if len(ridge):
        best = ridge.sort_values("value", ascending=False)
        top = ", ".join(f"{r.property} {fmt(r.value)}" for r in best.head(3).itertuples())
        head.append(f"Best-predicted properties ({large['size']}, ridge R²{', mean of runs' if several else ''}): "
                    f"{top}; median over {len(ridge)} properties {fmt(ridge['value'].median())}.")
    head.append(_compute_line(losses))

    blocks = [Block("h1", "AstroPT scaling study: summary")]
    if context:
        blocks.append(Block("p", " ".join(context.values())))
    blocks += [Block("ul", items=head)]
    blocks += _model_section(losses, sizes, several)
    blocks += _fit_section(fit, fit_table)
    n_runs = int(sizes.loc[sizes["size"] == large["size"], "runs"].iloc[0])
    blocks += _probe_section(str(large["size"]), largest, downstream, str(small["size"]), n_runs)
    return blocks


def headline_lines(markdown: str) -> list[str]:
    """The headline bullets of a summary written by :func:`to_markdown` (what ``make run`` prints)."""
    lines, started = [], False
    for line in markdown.splitlines():
        if line.startswith("- "):
            started = True
            lines.append(line[2:])
        elif started:
            break
    return lines


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


# The summary stage: what the workflow's summary rule calls.


def _layer_words(layer: int) -> str:
    """``embed.layer`` in words: -1 'the last block', -2 'the block before the last', 0 'block 1'."""
    if layer == -1:
        return "the last block's output"
    if layer < 0:
        return f"the output of block {-layer} from the end"
    return f"the output of block {layer + 1}"


def run_context(config: dict) -> dict[str, str]:
    """A few words on what was run (data, tokens, models), for the summary's first lines."""
    data, sizes = config["data"], config["sizes"]
    source = data["source"]
    where = {
        "synthetic": "synthetic Legacy-Survey-like galaxies",
        "folder": f"the stamps in {data.get('folder', {}).get('images')}",
        "huggingface": f"the HuggingFace dataset {data.get('huggingface', {}).get('repo', '')}",
    }.get(source, source)
    models = config.get("models", {}).get("source", "train")
    seeds = config["train"].get("seeds", [0])
    trained = (
        f"trained here for {config['train']['steps']:,} steps each, once per training seed "
        f"({', '.join(map(str, seeds))}; data seed {config.get('seed', 0)})"
        if models != "released" else "the released AstroPT v1 weights (not trained here)"
    )
    return {
        "data": f"Data: {where}, {data['image_size']} px stamps, {config['tokens']['patch_size']} px patches.",
        "models": f"Models: {', '.join(sizes)}, {trained}.",
        "embed": (
            f"Embeddings: {config['embed']['split']} split, first {config['embed']['n_tokens']} tokens, "
            f"{_layer_words(config['embed'].get('layer', -1))}, {config['embed'].get('pooling', 'mean')} pooling."
        ),
    }


def write_summary(sidecars, fit_path, probe_paths, downstream_csv, out_md, out_html, config: dict, log=print) -> str:
    """``results/summary.md`` (and the same as HTML for the report): the headline numbers and
    their tables (:func:`build_summary`), every number read from the files named in it."""
    import json
    from pathlib import Path

    from astropt.runs import load_sidecars

    losses = load_sidecars(sidecars)
    fit = json.loads(Path(fit_path).read_text())
    probes = {Path(p).stem: pd.read_csv(p) for p in probe_paths}
    downstream = pd.read_csv(downstream_csv)
    blocks = build_summary(losses, fit, probes, downstream, context=run_context(config), fit_table=_fit_table(fit))
    text = to_markdown(blocks)
    Path(out_md).write_text(text)
    Path(out_html).write_text(to_html(blocks))
    log(text)
    return text


def _fit_table(fit: dict):
    """The fitted parameters as (header, rows, notes) for the summary: astropt.tables' table."""
    from astropt.tables import fit_table, table_cells

    return table_cells(fit_table(fit))



def main(argv: Sequence[str] | None = None) -> int:
    """``python -m astropt.summary [results/summary.md]``: print the summary's headline lines."""
    import sys
    from pathlib import Path

    args = list(sys.argv[1:] if argv is None else argv)
    path = Path(args[0] if args else "results/summary.md")
    if not path.exists():
        print(f"{path} does not exist: run the workflow first (make run)", file=sys.stderr)
        return 1
    print(f"Headline numbers ({path}):")
    for line in headline_lines(path.read_text()):
        print(f"- {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
