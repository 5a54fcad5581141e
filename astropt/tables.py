"""The fits as tables: ``results/scaling/fit.md``, ``fit.tex`` and ``fit.csv``.

- :func:`fit_table`, :func:`table_markdown`, :func:`table_latex`, :func:`table_cells`: the laws
  over N and C (:func:`astropt.scaling.fit_study`), a row per variable and law;
- :func:`grid_markdown`, :func:`grid_latex`: the N x D grid's section (:func:`astropt.chinchilla.grid_study`);
- :func:`compute_markdown`: the runs' measured compute (:func:`astropt.compute.compute_table`).

An interval end at a parameter's limit (where the runs set no limit) is marked with a dagger.

Example::

    import json
    from astropt.tables import fit_table, table_markdown

    print(table_markdown(fit_table(json.load(open("results/scaling/fit.json")))))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from astropt.chinchilla import _CI_BOUNDS as _LIMITS  # where each interval is clipped
from astropt.config import CI_LEVEL

#: The variables a law can be fitted against: symbol -> what it is.
VARIABLES = {"N": "parameters", "C": "training compute (FLOPs)"}

__all__ = ["compute_markdown", "fit_table", "grid_latex", "grid_markdown", "table_cells", "table_latex", "table_markdown"]


#: Columns of :func:`fit_table`; ``X`` stands for the fit's variable (``N_c`` or ``C_c``).
TABLE_COLUMNS = [
    "fit", "variable", "variable_name", "law", "model", "n_points", "dof", "ci_level",
    "alpha", "alpha_err", "alpha_lo", "alpha_hi",
    "L_inf", "L_inf_err", "L_inf_lo", "L_inf_hi",
    "log10_X_c", "log10_X_c_err", "log10_X_c_lo", "log10_X_c_hi",
    "alpha_boot_lo", "alpha_boot_hi", "L_inf_boot_lo", "L_inf_boot_hi", "log10_X_c_boot_lo", "log10_X_c_boot_hi",
    "n_boot", "open_ends", "boot_open_ends", "estimator", "preferred", "r2", "rss", "degenerate", "reason",
]

_LAW_NAMES = {"saturating": "saturating", "power_law": "power law"}
_TABLE_VARIABLES = {"N": "N (parameters)", "C": "C (training FLOPs)"}
_SIDES = ("lower", "upper")


def _fits_of(fits: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The fits in ``fits``: a single :func:`fit_scaling_laws` result, or a mapping of
    names to results (such as ``fit.json``, whose other keys are skipped)."""
    if "saturating" in fits or "error" in fits:
        return {fits.get("variable", "N"): fits}
    return {k: v for k, v in fits.items() if isinstance(v, Mapping) and ("saturating" in v or "error" in v)}


def fit_table(fits: Mapping[str, Any]) -> pd.DataFrame:
    """The fits as one tidy table: a row per fit (variable) and law.

    Args:
        fits: ``fit.json`` of the scaling rule (``{"params": ..., "compute": ...}``),
            any mapping of names to :func:`fit_scaling_laws` results, or one result.
            An entry ``{"error": ...}`` (no fit was possible) gives one row with the
            error as its ``reason``.

    Returns:
        :data:`TABLE_COLUMNS`: ``fit`` (the name), ``variable`` (``N`` / ``C``),
        ``law`` (``saturating`` / ``power_law``), each parameter with its standard
        error and interval ends (``*_lo``, ``*_hi``; NaN when there is none, and
        ``L_inf`` NaN for the power law), ``log10_X_c`` the log10 scale of the
        variable (``log10_N_c`` or ``log10_C_c``), ``open_ends`` naming interval
        ends that are bounds of the fit (e.g. ``"L_inf lower"``), and ``degenerate``
        / ``reason``.

    Raises:
        ValueError: If ``fits`` holds no fit.
    """
    entries = _fits_of(fits)
    if not entries:
        raise ValueError(f"no scaling fits found: expected 'saturating' / 'power_law' entries, got keys {list(fits)}")
    rows = []
    for name, fit in entries.items():
        v = fit.get("variable", "N")
        boot = fit.get("bootstrap") or {}
        base = {"fit": name, "variable": v, "variable_name": VARIABLES.get(v, v),
                "n_points": fit.get("n_points"), "ci_level": fit.get("ci_level"), "open_ends": "",
                "boot_open_ends": "", "reason": "", "estimator": fit.get("estimator", "least_squares"),
                "n_boot": boot.get("n_resamples") if boot.get("available") else None}
        if "error" in fit:
            rows.append({**base, "law": "none", "degenerate": True, "reason": f"no fit: {fit['error']}"})
            continue
        for law in ("saturating", "power_law"):
            p = fit[law]
            notes = [p.get("reason", ""), fit.get("note", "")]
            row = {**base, "law": law, "model": p.get("model"), "dof": p.get("dof"),
                   "ci_level": p.get("ci_level", base["ci_level"]), "r2": p.get("r2"), "rss": p.get("rss"),
                   "degenerate": bool(p.get("degenerate", False)), "reason": "; ".join(n for n in notes if n),
                   "preferred": fit.get("preferred") == law if "preferred" in fit else None}
            opened, boot_opened = [], []
            for col, key in (("alpha", "alpha"), ("L_inf", "L_inf"), ("log10_X_c", f"log10_{v}_c")):
                if key not in p:
                    continue
                ci = p.get(f"{key}_ci") or [None, None]
                row.update({col: p.get(key), f"{col}_err": p.get(f"{key}_err"),
                            f"{col}_lo": ci[0], f"{col}_hi": ci[1]})
                opened += [f"{col} {end}" for end, o in zip(_SIDES, (p.get("ci_open") or {}).get(key, [False, False]))
                          if o]
                if p.get(f"{key}_ci") is None and p.get(f"{key}_err") is not None and not row["degenerate"]:
                    opened.append(f"{col} unbounded")  # e.g. Fieller's set of a flat power law
                boot_ci = p.get(f"{key}_boot_ci") or [None, None]
                row.update({f"{col}_boot_lo": boot_ci[0], f"{col}_boot_hi": boot_ci[1]})
                boot_opened += [f"{col} {end}" for end, o in zip(_SIDES, (p.get("boot_open") or {}).get(key, [False, False]))
                               if o]
            row["open_ends"] = "; ".join(opened)
            row["boot_open_ends"] = "; ".join(boot_opened)
            rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=TABLE_COLUMNS)
    numeric = [c for c in TABLE_COLUMNS if c.split("_")[-1] in ("err", "lo", "hi") or c in
               ("alpha", "L_inf", "log10_X_c", "r2", "rss", "ci_level", "n_boot")]
    table[numeric] = table[numeric].apply(pd.to_numeric, errors="coerce")
    return table


def _decimals(value: float, err: float) -> int:
    """Decimals that show ``err`` to 2 significant figures (3 significant figures of
    ``value`` when there is no usable error)."""
    ref = err if math.isfinite(err) and err > 0 else abs(value) / 10 if value else 1.0
    return int(min(max(1 - math.floor(math.log10(ref)), 0), 8))


def _fmt_number(x: float, decimals: int) -> str:
    return f"{x:.{decimals}f}" if abs(x) < 1e6 else f"{x:.3g}"


def _ends(lo: float, hi: float, d: int, col: str, opened: str, dagger: str) -> str:
    """``[lo, hi]``, an end named in ``opened`` (``"alpha lower"``) marked with ``dagger``."""
    return "[" + ", ".join(_fmt_number(e, d) + (dagger if f"{col} {side}" in opened else "")
                           for e, side in zip((lo, hi), _SIDES)) + "]"


def _cell(row: Mapping[str, Any], col: str, pm: str, dagger: str, dash: str, gap: str = " ") -> str:
    """``value ± err [lo, hi]`` for one parameter of a table row."""
    value = row.get(col)
    if value is None or not np.isfinite(value):
        return dash
    err = row.get(f"{col}_err")
    err = float(err) if err is not None and np.isfinite(err) else float("nan")
    d = _decimals(float(value), err)
    text = _fmt_number(value, d)
    if math.isfinite(err) and err > 0:
        text += f" {pm} {_fmt_number(err, d)}"
    lo, hi = row.get(f"{col}_lo"), row.get(f"{col}_hi")
    if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
        text += gap + _ends(lo, hi, d, col, row.get("open_ends", ""), dagger)
    elif f"{col} unbounded" in row.get("open_ends", ""):
        text += f"{gap}[unbounded]"
    return text


def _boot_cell(row: Mapping[str, Any], col: str, dagger: str, dash: str) -> str:
    """``[lo, hi]`` of a parameter's bootstrap interval over runs, at the decimals of its
    analytic error (or of the interval's width); ``†`` marks an end at a bound."""
    lo, hi = row.get(f"{col}_boot_lo"), row.get(f"{col}_boot_hi")
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return dash
    err = row.get(f"{col}_err")
    err = float(err) if err is not None and np.isfinite(err) and err > 0 else (hi - lo) / 4
    value = row.get(col)
    d = _decimals(float(value) if value is not None and np.isfinite(value) else float(hi), err)
    return _ends(lo, hi, d, col, row.get("boot_open_ends") or "", dagger)


def _table_rows(
    table: pd.DataFrame, pm: str, dagger: str, dash: str, gap: str = " "
) -> tuple[list[list[str]], list[str], bool]:
    """Cells of the text tables, the notes (numbered) and whether a dagger is used."""
    body, notes, any_open = [], [], False
    for row in table.to_dict("records"):
        note = ""
        if row["reason"]:  # each distinct reason numbered once
            if row["reason"] not in notes:
                notes.append(row["reason"])
            note = f"({notes.index(row['reason']) + 1})"
        any_open |= any(side in (row.get(col) or "") for col in ("open_ends", "boot_open_ends")
                        for side in ("lower", "upper"))
        dof = row.get("dof")
        law = _LAW_NAMES.get(row["law"], "no fit") + (" (preferred)" if row.get("preferred") is True else "")
        body.append([
            _TABLE_VARIABLES.get(row["variable"], str(row["variable"])),
            law,
            _cell(row, "alpha", pm, dagger, dash, gap),
            _boot_cell(row, "alpha", dagger, dash),
            _cell(row, "L_inf", pm, dagger, dash, gap),
            _boot_cell(row, "L_inf", dagger, dash),
            _cell(row, "log10_X_c", pm, dagger, dash, gap),
            str(int(row["n_points"])) if pd.notna(row["n_points"]) else dash,
            str(int(dof)) if dof is not None and pd.notna(dof) else dash,
            note,
        ])
    return body, notes, any_open


def _level(table: pd.DataFrame) -> str:
    levels = table["ci_level"].dropna().unique()
    if len(levels) > 1:
        return "stated"
    return f"{100 * (levels[0] if len(levels) else CI_LEVEL):g} %"


#: Column headers of :func:`table_cells` and :func:`table_markdown`.
TABLE_HEADER = ["variable", "law", "α", "α, bootstrap", "L∞", "L∞, bootstrap", "log10 X_c", "runs", "dof", "note"]


def table_cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]], list[str]]:
    """The fit table as plain-text cells, for any writer (the summary, HTML, ...).

    Args:
        table: :func:`fit_table`'s output.

    Returns:
        ``(header, rows, notes)``: :data:`TABLE_HEADER`; one row of strings per
        table row, each parameter as ``value ± error [lo, hi]`` (``†`` marking an
        interval end at a bound of the fit); the numbered notes that the ``note``
        column refers to (reasons of degenerate fits and missing fits).
    """
    rows, notes, _ = _table_rows(table, "±", "†", "–")
    return list(TABLE_HEADER), rows, notes


def table_markdown(table: pd.DataFrame) -> str:
    """The fit table as a GitHub-flavoured markdown table with notes below.

    Each parameter reads ``value ± standard error [interval]``; ``†`` marks an
    interval end at a bound of the fit; notes give the reasons of degenerate fits.

    Args:
        table: :func:`fit_table`'s output.

    Returns:
        Markdown text ending in a newline.
    """
    body, notes, any_open = _table_rows(table, "±", "†", "–")
    lines = [_md_line(TABLE_HEADER), "|" + "---|" * len(TABLE_HEADER), *map(_md_line, body), "",
             _caption(table, _level(table))]
    if any_open:
        lines.append("† interval end at a bound of the search (0 ≤ L∞ ≤ max L, 0 < α ≤ 5, log10 X_c within "
                     "30 decades of the data): the data set no limit there.")
    lines.extend(f"({i}) {n}" for i, n in enumerate(notes, 1))
    return "\n".join(lines) + "\n"


def _caption(table: pd.DataFrame, level: str, latex: bool = False) -> str:
    """What the table's entries are: the fits, their estimator and both kinds of interval
    (as LaTeX text with ``latex``: ``level`` is then already LaTeX)."""
    estimator = set(table["estimator"].dropna()) if "estimator" in table else set()
    huber = "huber" in estimator
    n_boot = table["n_boot"].dropna() if "n_boot" in table else pd.Series(dtype=float)
    boot = (f"bootstrap: {int(n_boot.max())} resamples of the runs within each size, each refitted, "
            f"{level} percentile interval (t-calibrated for few runs; astropt.resample)" if len(n_boot)
            else "bootstrap: none (it needs two or more runs of a size)")
    fitted = ("Huber loss (delta 1e-3) of log L residuals, L-BFGS from a grid of starts (Besiroglu et al. 2024); "
              "analytic errors are for least squares only" if huber else "least squares in log L")
    text = (f"Fits of every run's final validation loss L against parameters N or training compute C (X): "
            f"saturating @SAT and power law @PL, {fitted}. Each entry: value @PM "
            f"standard error [@LEVEL analytic interval: profile likelihood for the saturating law, Student-t / "
            f"Fieller for the power law]; {boot.replace(level, '@LEVEL')}. 'preferred': the law the runs support "
            f"(F-test of the floor @LINF).")
    if latex:
        symbols = {"@SAT": "$L = L_\\infty + (X_c/X)^\\alpha$", "@PL": "$L = (X_c/X)^\\alpha$", "@PM": "$\\pm$",
                   "@LINF": "$L_\\infty$", "@LEVEL": level}
        text = _latex_escape(text)
    else:
        symbols = {"@SAT": "L = L∞ + (X_c/X)^α", "@PL": "L = (X_c/X)^α", "@PM": "±", "@LINF": "L∞", "@LEVEL": level}
    for key, value in symbols.items():
        text = text.replace(key, value)
    return text


def _md_line(cells) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


_LATEX_ESCAPES = str.maketrans({**{ch: "\\" + ch for ch in "&%$#_{}"}, "~": "\\textasciitilde{}",
                                "^": "\\textasciicircum{}", "\\": "\\textbackslash{}"})


def _latex_escape(text: str) -> str:
    return text.translate(_LATEX_ESCAPES)


def table_latex(table: pd.DataFrame) -> str:
    """The fit table as a LaTeX ``tabular`` in booktabs style, notes below the rule.

    Needs ``\\usepackage{booktabs}`` in the document; nothing else.

    Args:
        table: :func:`fit_table`'s output.

    Returns:
        LaTeX text ending in a newline.
    """
    body, notes, any_open = _table_rows(table, "\\pm", "^\\dagger", "--", gap="\\;")
    level = _latex_escape(_level(table)).replace(" \\%", "\\,\\%")
    ncol = len(TABLE_HEADER)

    def math_cell(cell: str) -> str:
        return cell if cell in ("--", "") else "$" + cell.replace("unbounded", "\\mathrm{unbounded}") + "$"

    lines = [
        "% Generated by astropt.tables.table_latex (needs \\usepackage{booktabs}).",
        "\\begin{tabular}{lllllllrrl}",
        "\\toprule",
        "Variable & Law & $\\alpha$ & $\\alpha$, bootstrap & $L_\\infty$ & $L_\\infty$, bootstrap & "
        "$\\log_{10} X_c$ & Runs & dof & Note \\\\",
        "\\midrule",
    ]
    for r in body:
        cells = [_latex_escape(r[0]), _latex_escape(r[1]), *(math_cell(c) for c in r[2:7]), r[7], r[8], r[9]]
        lines.append(" & ".join(cells) + " \\\\")
    lines.append("\\bottomrule")
    caption = _caption(table, level, latex=True)
    lines.append(f"\\multicolumn{{{ncol}}}{{p{{0.9\\textwidth}}}}{{\\footnotesize {caption}}} \\\\")
    if any_open:
        lines.append(f"\\multicolumn{{{ncol}}}{{p{{0.9\\textwidth}}}}{{\\footnotesize $^\\dagger$ interval end at a bound of "
                     f"the search ($0 \\le L_\\infty \\le \\max L$, $0 < \\alpha \\le 5$, $\\log_{{10}} X_c$ within 30 "
                     f"decades of the data): the data set no limit there.}} \\\\")
    for i, n in enumerate(notes, 1):
        lines.append(f"\\multicolumn{{{ncol}}}{{p{{0.9\\textwidth}}}}{{\\footnotesize ({i}) {_latex_escape(n)}}} \\\\")
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"


# The N x D grid's section.

GRID_TITLE = "Loss over model size and tokens (Chinchilla)"
_ROWS = (  # key, markdown symbol, LaTeX symbol
    ("E", "E", "$E$"), ("A", "A", "$A$"), ("alpha", "α", "$\\alpha$"), ("B", "B", "$B$"), ("beta", "β", "$\\beta$"),
    ("a", "a (N_opt ∝ C^a)", "$a$ ($N_\\mathrm{opt} \\propto C^a$)"),
    ("b", "b (D_opt ∝ C^b)", "$b$ ($D_\\mathrm{opt} \\propto C^b$)"),
)
_UNICODE_TEX = {"†": "$^\\dagger$", "±": "$\\pm$", "×": "$\\times$", "α": "$\\alpha$", "β": "$\\beta$", "δ": "$\\delta$",
                "∝": "$\\propto$", "≥": "$\\geq$", "≤": "$\\leq$", "–": "--", "−": "-", "∞": "$\\infty$"}
# caption tokens: (markdown, LaTeX)
_TOKENS = {"@LAW": ("L = E + A/N^α + B/D^β", "$L = E + A/N^\\alpha + B/D^\\beta$"),
           "@DELTA": ("δ = 1e-3", "$\\delta = 10^{-3}$"), "@C": ("C = 6ND", "$C = 6ND$"),
           "@NOPT": ("N_opt ∝ C^a", "$N_\\mathrm{opt} \\propto C^a$"),
           "@DOPT": ("D_opt ∝ C^b", "$D_\\mathrm{opt} \\propto C^b$"), "@X": ("×", "$\\times$")}


def _tex(text: str) -> str:
    """Plain text (reasons, verdicts) as LaTeX text: special characters escaped, symbols in math."""
    return "".join(_UNICODE_TEX.get(ch, ch) for ch in _latex_escape(text))


def _num(x: float, ref: float, tex: bool) -> str:
    """``x`` to 2 significant figures of ``ref`` (its interval's half-width, or a hundredth of
    it); 3 significant figures in scientific notation when large or small."""
    if x != 0 and not 1e-3 <= abs(x) < 1e4:
        mant, exp = f"{x:.2e}".split("e")
        return f"{mant}\\times10^{{{int(exp)}}}" if tex else f"{mant}e{int(exp)}"
    d = int(min(max(1 - math.floor(math.log10(ref)), 0), 6)) if ref > 0 and math.isfinite(ref) else 3
    return f"{x:.{d}f}"


def _val(value: float, ci: Sequence[float] | None, tex: bool, key: str | None = None) -> str:
    """``value [lo, hi]`` (math in LaTeX); an end at the parameter's limit marked † (the runs set
    no limit there)."""
    ref = (ci[1] - ci[0]) / 2 if ci and ci[1] > ci[0] else abs(value) / 100
    text = _num(value, ref, tex)
    if ci:
        limits = _LIMITS.get(key, (None, None))
        dagger = "^{\\dagger}" if tex else "†"
        ends = [_num(end, ref, tex) + (dagger if end == limit else "") for end, limit in zip(ci, limits)]
        text += ("\\;" if tex else " ") + f"[{ends[0]}, {ends[1]}]"
    return f"${text}$" if tex else text


def _missing(reason: str | None, tex: bool) -> str:
    text = f"not identified: {reason or 'no estimate'}"
    return _tex(text) if tex else text


def _grid_rows(fit: dict | None, iso: dict | None, tex: bool) -> list[list[str]]:
    """Per parameter: symbol, approach 3 (value [interval] or why not), approach 2 (a, b) and
    whether the two approaches' intervals overlap."""
    dash = "--" if tex else "–"
    rows = []
    for key, md_sym, tex_sym in _ROWS:
        if not fit or "unidentified" not in fit:
            three = dash
        elif fit.get(key) is None:
            three = _missing(fit["unidentified"].get(key), tex)
        else:
            three = _val(fit[key], fit.get(f"{key}_ci"), tex, key)
        two, verdict = dash, ""
        if key in ("a", "b"):
            if not iso:
                two = dash
            elif iso.get(key) is None:
                two = _missing(iso.get("reason"), tex)
            else:
                two = _val(iso[key], iso.get(f"{key}_ci"), tex, key)
            ci3, ci2 = (fit or {}).get(f"{key}_ci"), (iso or {}).get(f"{key}_ci")
            if ci3 and ci2:
                verdict = "agree" if ci3[0] <= ci2[1] and ci2[0] <= ci3[1] else "differ"
        rows.append([tex_sym if tex else md_sym, three, two, verdict])
    return rows


def _grid_caption(fit: dict, iso: dict | None, tex: bool) -> str:
    """What the table shows: the runs, both approaches and the intervals."""
    n_boot, level = int(fit.get("n_boot") or 0), f"{100 * fit.get('ci_level', CI_LEVEL):g} %"
    boot = (f"Intervals: {level} bootstrap, {n_boot} resamples of the runs within each cell, each refitted, "
            "t-calibrated percentile intervals (astropt.resample)" if n_boot else "Intervals: none (no resamples)")
    n_N, n_D = fit.get("n_N"), fit.get("n_D")
    sizes = f"{n_N} size{'s' * (n_N != 1)} @X {n_D} token budget{'s' * (n_D != 1)}"
    runs = f"{fit['n_runs']} runs in {fit['n_cells']} cells ({sizes}). " if "n_cells" in fit else ""
    text = (f"{runs}"
            f"Approach 3: @LAW fitted to every run by the summed Huber loss (@DELTA) of ln L residuals "
            f"(Besiroglu et al. 2024), @NOPT and @DOPT. Approach 2: IsoFLOP profiles, a parabola of ln L in "
            f"ln N at each compute @C (each size's cell means interpolated in ln D, no extrapolation), a the "
            f"slope of ln N_opt on ln C over the levels whose minimum the sizes pin down. {boot}. "
            "† an end at the parameter's limit (the runs set no limit there). "
            "agree / differ: whether the two intervals overlap (a lenient check; both come from the same runs).")
    if tex:
        text = _tex(text)
    for token, (md, latex) in _TOKENS.items():
        text = text.replace(token, latex if tex else md)
    return text


def _level_lines(iso: dict | None, tex: bool) -> list[str]:
    """One line per IsoFLOP level: its N_opt with interval, or why it has none."""
    if not iso:
        return []
    if not iso.get("levels"):
        return [_tex(f"none: {iso.get('reason')}") if tex else f"none: {iso.get('reason')}"]
    lines = []
    for e in iso["levels"]:
        ref = abs(e["C"]) / 100
        head = f"C = {_num(e['C'], ref, tex)}"
        head = (f"${head}$ FLOPs" if tex else f"{head} FLOPs") + f" ({len(e['N'])} sizes): "
        if e["N_opt"] is None:
            lines.append(head + (_tex(f"no N_opt: {e['reason']}") if tex else f"no N_opt: {e['reason']}"))
            continue
        n_opt = _val(e["N_opt"], e["N_opt_ci"], tex)
        d_opt = _val(e["D_opt"], None, tex)
        text = (f"$N_\\mathrm{{opt}}$ = {n_opt}, $D_\\mathrm{{opt}}$ = {d_opt}" if tex
                else f"N_opt = {n_opt}, D_opt = {d_opt}")
        notes = []
        if e["unbracketed_share"] and not e["reason"]:
            notes.append(f"minimum outside the sizes in {100 * e['unbracketed_share']:.0f} % of resamples")
        if e["reason"]:
            notes.append(e["reason"])
        if notes:
            text += "; " + (_tex("; ".join(notes)) if tex else "; ".join(notes))
        lines.append(head + text)
    return lines


def _holdout_line(h: dict | None) -> str:
    """The held-out corner in one sentence (plain text)."""
    if not h:
        return "not tested"
    if h.get("verdict"):
        return h["verdict"]
    if h.get("predicted") is not None:
        return (f"predicted {h['predicted']:.4g} for the largest-compute cell (N = {h['N']:.3g}, D = {h['D']:.3g}), "
                f"observed {h['observed']:.4g}; no interval: {h.get('reason')}")
    return f"not tested: {h.get('reason')}"


def grid_markdown(grid: dict) -> str:
    """The grid's section of ``fit.md``: approach 3's parameters with their bootstrap intervals
    (a parameter the grid cannot tell reads "not identified: <why>", never a number), approach
    2's exponents beside approach 3's, the IsoFLOP levels and the held-out corner.

    Args:
        grid: ``{"approach3": fit_grid(...), "isoflop": isoflop_profiles(...),
            "holdout": holdout_corner(...)}`` (any may be missing; ``{"reason": ...}`` alone
            gives the section with that reason).

    Returns:
        Markdown text ending in a newline.
    """
    lines = [f"## {GRID_TITLE}", ""]
    fit, iso = grid.get("approach3"), grid.get("isoflop")
    if not fit or "unidentified" not in fit:
        why = (fit or {}).get("error") or (fit or {}).get("reason") or grid.get("reason") or "no grid fit"
        return "\n".join([*lines, f"No fit: {why}", ""])
    lines += [_md_line(["", "approach 3: parametric fit", "approach 2: IsoFLOP profiles", "approaches"]),
              "|---|---|---|---|", *map(_md_line, _grid_rows(fit, iso, tex=False)), "",
              _grid_caption(fit, iso, tex=False), ""]
    if iso:
        lines += ["**IsoFLOP levels** (approach 2):", "", *(f"- {t}" for t in _level_lines(iso, tex=False)), ""]
    lines += [f"**Held-out corner**: {_holdout_line(grid.get('holdout'))}", ""]
    return "\n".join(lines)


def grid_latex(grid: dict) -> str:
    """The grid's section of ``fit.tex`` (see :func:`grid_markdown`): a starred subsection, a
    booktabs ``tabular`` with the caption below the rule, the IsoFLOP levels as a list and the
    held-out corner as a paragraph. Needs ``\\usepackage{booktabs}``; nothing else.

    Returns:
        LaTeX text ending in a newline.
    """
    lines = ["% Generated by astropt.tables.grid_latex (needs \\usepackage{booktabs}).",
             f"\\subsection*{{{_tex(GRID_TITLE)}}}"]
    fit, iso = grid.get("approach3"), grid.get("isoflop")
    if not fit or "unidentified" not in fit:
        why = (fit or {}).get("error") or (fit or {}).get("reason") or grid.get("reason") or "no grid fit"
        return "\n".join([*lines, _tex(f"No fit: {why}"), ""])
    lines += ["\\begin{tabular}{lp{0.3\\textwidth}p{0.3\\textwidth}l}", "\\toprule",
              " & Approach 3: parametric fit & Approach 2: IsoFLOP profiles & Approaches \\\\", "\\midrule",
              *(" & ".join(r) + " \\\\" for r in _grid_rows(fit, iso, tex=True)), "\\bottomrule",
              f"\\multicolumn{{4}}{{p{{0.9\\textwidth}}}}{{\\footnotesize {_grid_caption(fit, iso, tex=True)}}} \\\\",
              "\\end{tabular}", ""]
    if iso:
        lines += ["\\paragraph{IsoFLOP levels (approach 2).}", "\\begin{itemize}",
                  *(f"\\item {t}" for t in _level_lines(iso, tex=True)), "\\end{itemize}", ""]
    lines += [f"\\paragraph{{Held-out corner.}} {_tex(_holdout_line(grid.get('holdout')))}", ""]
    return "\n".join(lines)


def compute_markdown(rows: list[dict[str, Any]]) -> str:
    """:func:`compute_table` as a Markdown table, with the sweep's totals below it."""
    lines = [
        "## Training compute (measured)",
        "",
        "| size | budget | runs | N | D (tokens) | 6ND | FLOPs per run | wall h per run | GPU-h per run | FLOP/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def num(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    for r in rows:
        lines.append(
            f"| {r['size']} | {r['budget']} | {r['runs']} | {r['N']:,} | {r['D']:,} | {r['C_6ND']:.3g} | "
            f"{r['flops']:.3g} | {num(r['wall_h'], '.3g')} | {num(r['gpu_hours'], '.3g')} | {num(r['flops_per_s'], '.3g')} |"
        )
    total_flops = sum(r["flops"] * r["runs"] for r in rows)
    wall = sum((r["wall_h"] or 0.0) * r["runs"] for r in rows)
    gpu = sum((r["gpu_hours"] or 0.0) * r["runs"] for r in rows)
    lines += ["", f"Total: {sum(r['runs'] for r in rows)} runs, {total_flops:.3g} FLOPs, "
              f"{wall:.3g} wall-hours, {gpu:.3g} GPU-hours (FLOPs: 6ND plus attention, astropt/compute.py; "
              f"hours as measured by each run's trainer)."]
    return "\n".join(lines) + "\n"
