"""Loss as a function of model size and data together: Chinchilla's fit and the
compute-optimal allocation.

A grid of runs over parameters ``N`` and training tokens ``D`` (each (N, D) cell trained
with a few seeds) is fitted with the law of Hoffmann et al. (2022), their approach 3:

    L(N, D) = E + A / N^alpha + B / D^beta

by the estimator of Besiroglu et al. (2024): the summed Huber loss (delta 1e-3) of the
residuals of log L, ``log L - LSE(log A - alpha log N, log B - beta log D, log E)``,
minimised by L-BFGS from a grid of starts (the best of them kept). Intervals come from the
bootstrap over runs of :mod:`astropt.resample`: the runs of each cell are resampled within
that cell (with its small-sample corrections), every resample refitted from the point
estimate.

From the fit, at compute ``C = 6 N D`` the loss is lowest at

    N_opt(C) = G (C / 6)^a,   D_opt(C) = (C / 6)^b / G,
    a = beta / (alpha + beta),  b = alpha / (alpha + beta),  G = (alpha A / (beta B))^(1 / (alpha + beta)),

each exponent with its bootstrap interval, and with ``frontier_C`` a pointwise band of
``N_opt(C)`` and ``D_opt(C)``.

Beside it, :func:`isoflop_profiles` is their approach 2, which assumes no law: at each of a
few compute levels the loss along ``D = C / (6 N)`` (each size's cell means interpolated in
ln D, never extrapolated) is fitted by a parabola in ln N, its minimum is ``N_opt(C)``, and
``a`` is the slope of ln N_opt on ln C. The two estimates of ``a`` come from the same runs,
so their agreement checks the law's form, not the data. :func:`holdout_corner` holds out
the cell of largest compute, fits the rest and says whether its runs fall inside the
prediction interval. :func:`grid_markdown` and :func:`grid_latex` write all three for
``fit.md`` / ``fit.tex``.

What a grid cannot tell is said, not printed as a number: with one value of ``D`` (or
``N``) in the grid, ``beta`` and ``B`` (or ``alpha`` and ``A``) are not identified, and
neither are the compute-optimal exponents; :func:`fit_grid` then leaves them ``None`` with
the reason. An IsoFLOP level whose minimum is not inside its sizes has no ``N_opt``, with
the reason (the loss still falls, or rises, with N), and the held-out corner is not tested
when the other cells leave the law unidentified.

Simulated (Chinchilla's fitted law, 1 % log-normal run noise, 200 grids each, 400 resamples),
the 95 % interval of approach 2's ``a`` covered the truth 95 % of the time on a grid of 15
sizes x 5 budgets around the frontier (x 2 seeds), 91 % on 5 sizes x 4 budgets, 90 % on 8 x 6
(x 2 seeds) and 94 % on 8 x 6 x 4 seeds: the parabola's vertex is slightly biased. The held-out
corner's 95 % prediction interval held the observed mean in 58 of 60 simulated 4 x 3 x 2 grids.

Example::

    fit = fit_grid(N, D, L, cells, n_boot=1000, frontier_C=[1e18, 1e19])
    print(fit["alpha"], fit["alpha_ci"], fit["a"], fit["a_ci"], fit["frontier"]["N_lo"])
    grid = {"approach3": fit, "isoflop": isoflop_profiles(N, D, L, cells),
            "holdout": holdout_corner(N, D, L, cells)}
    print(grid_markdown(grid))
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import optimize
from scipy.special import logsumexp

from astropt.config import CI_LEVEL, N_BOOT
from astropt.io import runs_text, to_jsonable

#: Huber's delta on log-loss residuals (Besiroglu et al. 2024, arXiv 2404.10102), for the grid's
#: fit and astropt.scaling's Huber estimator.
HUBER_DELTA = 1e-3
# Starts of L-BFGS: Hoffmann et al.'s grid, over log A, log B, log E, alpha, beta.
_STARTS = {
    "logA": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "logB": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "logE": (-2.0, -1.0, 0.0, 1.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}
_BOUNDS = [(-50.0, 80.0), (-50.0, 80.0), (-20.0, 5.0), (0.0, 5.0), (0.0, 5.0)]
PARAMS = ("A", "B", "E", "alpha", "beta")


def _objective(p: np.ndarray, x: np.ndarray, y: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    """Summed Huber loss of log residuals and its gradient; ``x = (log N, log D)``."""
    logA, logB, logE, alpha, beta = p
    t0 = logA - alpha * x[0]
    t1 = logB - beta * x[1]
    m = np.maximum(np.maximum(t0, t1), logE)
    e0, e1, e2 = np.exp(t0 - m), np.exp(t1 - m), np.exp(logE - m)
    total = e0 + e1 + e2
    r = m + np.log(total) - y  # log of the predicted loss, minus the observed
    ar = np.abs(r)
    small = ar <= delta
    loss = float(np.where(small, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum())
    dr = np.where(small, r, delta * np.sign(r)) / total  # d loss / d term, over the softmax
    w0, w1 = dr * e0, dr * e1
    g = np.array([w0.sum(), w1.sum(), (dr * e2).sum(), -(w0 * x[0]).sum(), -(w1 * x[1]).sum()])
    return loss, g


def _minimise(x: np.ndarray, y: np.ndarray, starts: Sequence[np.ndarray], delta: float) -> np.ndarray:
    best, best_loss = None, math.inf
    for p0 in starts:
        res = optimize.minimize(_objective, p0, args=(x, y, delta), jac=True, method="L-BFGS-B",
                                bounds=_BOUNDS, options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-12})
        if np.isfinite(res.fun) and res.fun < best_loss:
            best, best_loss = res.x, res.fun
    return best if best is not None else np.full(5, np.nan)


_GRID = np.array(list(itertools.product(*_STARTS.values())), dtype=np.float64)


def _grid_starts(x: np.ndarray, y: np.ndarray, delta: float, keep: int = 4) -> list[np.ndarray]:
    """The grid of starts ranked by their loss (all at once): L-BFGS runs from the best ``keep``."""
    g = _GRID
    terms = np.stack([
        g[:, 0, None] - g[:, 3, None] * x[0],
        g[:, 1, None] - g[:, 4, None] * x[1],
        np.broadcast_to(g[:, 2, None], (len(g), x.shape[1])),
    ])
    r = np.abs(logsumexp(terms, axis=0) - y)
    losses = np.where(r <= delta, 0.5 * r**2, delta * (r - 0.5 * delta)).sum(axis=1)
    return list(g[np.argsort(losses)[:keep]])


def compute_optimal(p: np.ndarray) -> tuple[float, float, float]:
    """``(a, b, G)`` of the compute-optimal allocation from ``(log A, log B, log E, alpha, beta)``."""
    logA, logB, _, alpha, beta = p
    s = alpha + beta
    if not s > 0:
        return math.nan, math.nan, math.nan
    logG = (math.log(alpha) + logA - math.log(beta) - logB) / s if alpha > 0 and beta > 0 else math.nan
    return beta / s, alpha / s, math.exp(logG) if math.isfinite(logG) else math.nan


def _check_runs(N, D, L, min_runs: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``N, D, L`` as float arrays; ValueError on mismatched lengths, too few runs or values
    that are not finite and positive."""
    N, D, L = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (N, D, L))
    if not len(N) == len(D) == len(L):
        raise ValueError(f"N, D and L must have one value per run, got {len(N)}, {len(D)}, {len(L)}")
    if len(L) < min_runs:
        raise ValueError(f"a fit of 5 parameters needs at least {min_runs} runs, got {len(L)}")
    for name, v in (("N", N), ("D", D), ("L", L)):
        if not (np.isfinite(v).all() and (v > 0).all()):
            raise ValueError(f"{name} must be finite and positive")
    return N, D, L


def _default_cells(N: np.ndarray, D: np.ndarray) -> list[str]:
    """One cell per distinct (N, D) pair (labels exact to the last digit)."""
    return [f"{n:.17g}|{d:.17g}" for n, d in zip(N, D)]


def _positive_levels(values, name: str) -> np.ndarray:
    v = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if v.ndim != 1 or not len(v) or not (np.isfinite(v).all() and (v > 0).all()):
        raise ValueError(f"{name} must be a non-empty sequence of finite positive compute values (FLOPs)")
    return v


def _interval(point: float, reps: np.ndarray, boot: dict, ci_level: float, bounds=(-math.inf, math.inf),
              noise_runs: int | None = None) -> list[float] | None:
    """The t-calibrated percentile interval of a statistic's bootstrap replicates (:mod:`astropt.resample`)."""
    from astropt.resample import calibrated_interval, t_factor

    f, _ = t_factor(reps, boot["means"], boot["var"], boot["counts"], ci_level, noise_runs)
    return calibrated_interval(point, reps, ci_level, f, bounds)[0]


def fit_grid(
    N: Sequence[float],
    D: Sequence[float],
    L: Sequence[float],
    cells: Sequence | None = None,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    ci_level: float = CI_LEVEL,
    frontier_C: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Fit ``L = E + A / N^alpha + B / D^beta`` to every run of a grid, with bootstrap intervals.

    Args:
        N: Parameters of each run.
        D: Training tokens of each run.
        L: Final validation loss of each run (positive).
        cells: Each run's cell label (runs of one cell are replicates, resampled together);
            default: the distinct (N, D) pairs.
        n_boot: Bootstrap resamples (0: no intervals).
        seed: Seed of the bootstrap.
        ci_level: Interval level.
        frontier_C: Compute values (FLOPs) where to give the compute-optimal frontier.

    Returns:
        ``A, B, E, alpha, beta`` and the compute-optimal exponents ``a`` (N_opt ~ C^a) and
        ``b`` (D_opt ~ C^b) with ``G``, each with ``<name>_ci`` (t-calibrated bootstrap
        percentile interval; None without resamples or when not identified); ``n_runs``,
        ``n_cells``, ``n_N``, ``n_D`` (distinct values), ``n_boot``, ``boot_failed``, and
        ``unidentified``: parameter -> why the grid cannot tell it. With ``frontier_C``,
        ``frontier``: ``{"C", "N_opt", "N_lo", "N_hi", "D_opt", "D_lo", "D_hi"}`` (lists, one
        entry per C; see :func:`_frontier`), None when ``a``, ``b`` or ``G`` is not identified.

    Raises:
        ValueError: On mismatched lengths, non-positive values, fewer than 5 runs or a
            ``frontier_C`` that is not positive.
    """
    C = None if frontier_C is None else _positive_levels(frontier_C, "frontier_C")
    out, state = _fit_grid(N, D, L, cells, n_boot=n_boot, seed=seed, ci_level=ci_level)
    if C is not None:
        out["frontier"] = _frontier(out, state, C, ci_level)
    return out


def _fit_grid(N, D, L, cells, *, n_boot: int, seed: int, ci_level: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`fit_grid`'s result and its bootstrap: ``{"boot": (n_boot, 8) replicates of
    :data:`_NAMED` or None, "means", "var", "counts"}`` (resampled cell means of log L, the
    cells' variances of log L and run counts)."""
    from astropt.resample import group_codes, group_variances, resample_within_groups

    N, D, L = _check_runs(N, D, L, min_runs=5)
    delta = HUBER_DELTA
    codes, labels = group_codes(list(_default_cells(N, D) if cells is None else cells))
    x, y = np.log(np.stack([N, D])), np.log(L)
    n_N, n_D = len(np.unique(N)), len(np.unique(D))
    unidentified = {}
    if n_N < 2:
        unidentified.update({k: f"the grid has one model size (N = {N[0]:.3g})" for k in ("A", "alpha", "E")})
    if n_D < 2:
        unidentified.update({k: f"the grid has one token budget (D = {D[0]:.3g})" for k in ("B", "beta", "E")})
    if unidentified:
        why = "; ".join(sorted(set(unidentified.values())))
        unidentified.update({k: f"needs both alpha and beta: {why}" for k in ("a", "b", "G")})

    p = _minimise(x, y, _grid_starts(x, y, delta), delta)
    point = _named(p)
    out: dict[str, Any] = {
        "model": "L = E + A / N^alpha + B / D^beta",
        "estimator": f"Huber (delta {delta:g}) on log residuals, L-BFGS from a grid of starts",
        "n_runs": len(L), "n_cells": len(labels), "n_N": n_N, "n_D": n_D,
        "ci_level": ci_level, "n_boot": int(n_boot), "unidentified": unidentified,
    }
    state: dict[str, Any] = {"boot": None}
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        Y, means = resample_within_groups(y, codes, n_boot, rng)
        # each resample refitted from the point estimate and its own best grid starts (a
        # warm start alone stays where the near-L1 Huber loss has a kink)
        boot = np.array([_named_vector(_minimise(x, Yb, [p, *_grid_starts(x, Yb, delta, keep=2)], delta)) for Yb in Y])
        var, counts = group_variances(y, codes)
        state = {"boot": boot, "means": means, "var": var, "counts": counts}
    boot = state["boot"]
    for i, name in enumerate(_NAMED):
        value = point[name]
        out[name] = None if name in unidentified else value
        identified = boot is not None and name not in unidentified and np.isfinite(boot[:, i]).sum() > 2
        out[f"{name}_ci"] = _interval(value, boot[:, i], state, ci_level, _CI_BOUNDS[name]) if identified else None
    identified = [i for i, name in enumerate(_NAMED) if name not in unidentified]
    out["boot_failed"] = int((~np.isfinite(boot[:, identified]).all(axis=1)).sum()) if boot is not None else 0
    return out, state


def _frontier(out: dict, state: dict, C: np.ndarray, ci_level: float) -> dict[str, Any] | None:
    """The compute-optimal allocation at compute ``C`` with a pointwise band.

    ``N_opt(C) = G (C / 6)^a`` from the point fit; the band at each ``C`` is the
    t-calibrated percentile interval (as for the parameters) of ``ln N_opt`` over the
    bootstrap refits' ``(a, G)``, and ``D_opt = C / (6 N_opt)`` mirrors it (``D_lo`` from
    ``N_hi``). Pointwise: the band does not hold the whole curve at ``ci_level`` jointly, and
    beyond the grid's compute it is an extrapolation of the law, not a measurement. ``N_lo``,
    ``N_hi``, ``D_lo``, ``D_hi`` are None without resamples (an entry None where the
    replicates gave no interval). None when ``a``, ``b`` or ``G`` is not identified.
    """
    if any(out.get(k) is None for k in ("a", "b", "G")):
        return None
    lnC6 = np.log(C / 6)
    lnN = math.log(out["G"]) + out["a"] * lnC6
    N_opt = np.exp(lnN)
    res: dict[str, Any] = {"C": C.tolist(), "N_opt": N_opt.tolist(), "N_lo": None, "N_hi": None,
                           "D_opt": (C / (6 * N_opt)).tolist(), "D_lo": None, "D_hi": None}
    boot = state.get("boot")
    if boot is None:
        return res
    a_b, G_b = boot[:, _NAMED.index("a")], boot[:, _NAMED.index("G")]
    with np.errstate(invalid="ignore", divide="ignore"):
        curves = np.log(G_b)[:, None] + a_b[:, None] * lnC6[None, :]
    lo, hi = [], []
    for j in range(len(C)):
        reps = curves[:, j]
        ci = _interval(float(lnN[j]), reps, state, ci_level) if np.isfinite(reps).sum() > 2 else None
        lo.append(math.exp(ci[0]) if ci else None)
        hi.append(math.exp(ci[1]) if ci else None)
    res.update({"N_lo": lo, "N_hi": hi,
                "D_lo": [c / (6 * h) if h else None for c, h in zip(C.tolist(), hi)],
                "D_hi": [c / (6 * v) if v else None for c, v in zip(C.tolist(), lo)]})
    return res


_NAMED = ("A", "B", "E", "alpha", "beta", "a", "b", "G")
# where the intervals are clipped: the t-calibrated ends of a skewed bootstrap can pass them
_CI_BOUNDS = {"A": (0.0, math.inf), "B": (0.0, math.inf), "E": (0.0, math.inf), "G": (0.0, math.inf),
              "alpha": _BOUNDS[3], "beta": _BOUNDS[4], "a": (0.0, 1.0), "b": (0.0, 1.0)}


def _named_vector(p: np.ndarray) -> list[float]:
    """:func:`_named`'s values in the order of :data:`_NAMED` (the bootstrap's columns)."""
    named = _named(p)
    return [named[k] for k in _NAMED]


def _named(p: np.ndarray) -> dict[str, float]:
    logA, logB, logE, alpha, beta = (float(v) for v in p)
    a, b, G = compute_optimal(p)
    return {"A": math.exp(logA), "B": math.exp(logB), "E": math.exp(logE), "alpha": alpha, "beta": beta,
            "a": a, "b": b, "G": G}


def predict(fit: dict, N, D) -> np.ndarray:
    """The fitted law's loss at ``(N, D)``."""
    N, D = np.asarray(N, dtype=np.float64), np.asarray(D, dtype=np.float64)
    return fit["E"] + fit["A"] / N ** fit["alpha"] + fit["B"] / D ** fit["beta"]


def optimal_allocation(fit: dict, C) -> tuple[np.ndarray, np.ndarray]:
    """``(N_opt, D_opt)`` at compute ``C`` (FLOPs, ``C = 6 N D``) from a fit's ``a, b, G``."""
    C = np.asarray(C, dtype=np.float64)
    return fit["G"] * (C / 6) ** fit["a"], (C / 6) ** fit["b"] / fit["G"]


# --------------------------------------------------------------------------- approach 2: IsoFLOP profiles

_TOL = 1e-9  # in ln D: a size reaches a compute level at the edge of its budgets within this
_SENTINEL = 1e6  # ln N_opt given to a resample whose minimum leaves the sizes (at +-this)


def _cell_values(N: np.ndarray, D: np.ndarray, cells) -> tuple[np.ndarray, list, np.ndarray, np.ndarray]:
    """Cell codes and labels, and each cell's ``N`` and ``D``; ValueError when a cell mixes pairs."""
    from astropt.resample import group_codes

    codes, labels = group_codes(list(_default_cells(N, D) if cells is None else cells))
    if len(codes) != len(N):
        raise ValueError(f"cells must label every run, got {len(codes)} labels for {len(N)} runs")
    cellN, cellD = np.empty(len(labels)), np.empty(len(labels))
    for g, label in enumerate(labels):
        n, d = np.unique(N[codes == g]), np.unique(D[codes == g])
        if len(n) > 1 or len(d) > 1:
            raise ValueError(f"cell {label!r} holds runs of different (N, D): a cell is one size and one budget")
        cellN[g], cellD[g] = n[0], d[0]
    return codes, labels, cellN, cellD


def _size_budgets(cellN: np.ndarray, cellD: np.ndarray) -> list[tuple[float, np.ndarray, list]]:
    """Per distinct size, ascending: ``(N, ln D of its distinct budgets ascending, cells at each)``."""
    out = []
    for n in np.unique(cellN):
        idx = np.flatnonzero(cellN == n)
        lnD = np.log(cellD[idx])
        u = np.unique(lnD)
        out.append((float(n), u, [idx[lnD == v] for v in u]))
    return out


def _profile(C: float, budgets: list, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The sizes that reach compute ``C`` inside their budgets (ascending) and, for each,
    the weights on the ``k`` cell means of log L that interpolate it linearly in ln D at
    ``D = C / (6 N)``: shape (s, k). Cells at the same (N, D) are averaged."""
    sizes, rows = [], []
    for n, u, groups in budgets:
        t = math.log(C / (6 * n))
        if t < u[0] - _TOL or t > u[-1] + _TOL:
            continue
        t = min(max(t, u[0]), u[-1])
        i = max(min(int(np.searchsorted(u, t, side="right")) - 1, len(u) - 2), 0)
        f = (t - u[i]) / (u[i + 1] - u[i]) if len(u) > 1 else 0.0
        w = np.zeros(k)
        w[groups[i]] += (1 - f) / len(groups[i])
        if f > 0:
            w[groups[i + 1]] += f / len(groups[i + 1])
        sizes.append(n)
        rows.append(w)
    return np.array(sizes), np.array(rows).reshape(len(rows), k)


def _default_levels(budgets: list, n_levels: int) -> np.ndarray | None:
    """``n_levels`` compute values log-spaced over the range where at least 3 sizes are reached
    without extrapolation; None where no compute is."""
    lo = np.array([math.log(6 * n) + u[0] for n, u, _ in budgets])
    hi = np.array([math.log(6 * n) + u[-1] for n, u, _ in budgets])
    ends = np.unique(np.concatenate([lo, hi]))
    cand = np.concatenate([ends, (ends[1:] + ends[:-1]) / 2])
    good = [c for c in cand if ((lo - _TOL <= c) & (c <= hi + _TOL)).sum() >= 3]
    if not good:
        return None
    first, last = min(good), max(good)
    return np.exp(np.linspace(first, last, n_levels)) if last - first > _TOL else np.array([math.exp(first)])


def _vertex(d: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Where the parabolas ``d = (d2, d1, d0)`` in centred ``u`` (shape (..., 3)) are lowest on
    ``[lo, hi]``: the vertex ``u`` where it lies inside (NaN elsewhere), and the side, 0 inside,
    +1 at the largest size (loss still falls with N), -1 at the smallest (loss rises with N)."""
    d2, d1 = d[..., 0], d[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        v = -d1 / (2 * d2)
    inside = (d2 > 0) & (v > lo) & (v < hi)
    falls = d2 * hi * hi + d1 * hi < d2 * lo * lo + d1 * lo
    return np.where(inside, v, np.nan), np.where(inside, 0, np.where(falls, 1, -1))


def _unbracketed_reason(side: int, d2: float, N: np.ndarray) -> str:
    if side > 0:
        text = f"profile has no minimum inside the sizes: loss still falls with N up to the largest ({N[-1]:.3g})"
    else:
        text = f"profile has no minimum inside the sizes: loss rises with N from the smallest ({N[0]:.3g})"
    return text + ("; the parabola's vertex lies outside them (an extrapolation)" if d2 > 0 else
                   "; the parabola opens downwards")


def _level_entry(C: float, N: np.ndarray, W: np.ndarray, ybar: np.ndarray, boot: dict | None,
                 ci_level: float) -> tuple[dict[str, Any], np.ndarray | None]:
    """One IsoFLOP level: its profile, parabola and minimum with the bootstrap's interval.
    Returns the entry and the resamples' ``ln N_opt`` (NaN where not bracketed; None without)."""
    from astropt.resample import calibrated_interval, t_factor

    lnN = np.log(N)
    e: dict[str, Any] = {"C": float(C), "N": N.tolist(), "D": (C / (6 * N)).tolist(), "L": np.exp(W @ ybar).tolist(),
                         "parabola": None, "N_opt": None, "L_opt": None, "N_opt_ci": None, "D_opt": None,
                         "unbracketed_share": None, "reason": None}
    if len(lnN) < 3:
        e["reason"] = (f"only {len(lnN)} size(s) reach C = {C:.3g} FLOPs inside their token budgets "
                       "(a parabola needs 3; no extrapolation in D)")
        return e, None
    m = float(lnN.mean())
    u = lnN - m
    P = np.linalg.pinv(np.column_stack([u * u, u, np.ones_like(u)]))  # (3, s): least squares
    d2, d1, d0 = P @ (W @ ybar)
    e["parabola"] = [float(d2), float(d1 - 2 * d2 * m), float(d0 - d1 * m + d2 * m * m)]  # in ln N
    v, side = _vertex(np.array([d2, d1, d0]), u[0], u[-1])
    if side == 0:
        e["N_opt"] = math.exp(m + float(v))
        e["L_opt"] = math.exp(d0 - d1 * d1 / (4 * d2))
        e["D_opt"] = C / (6 * e["N_opt"])
    else:
        e["reason"] = _unbracketed_reason(int(side), float(d2), N)
    if boot is None:
        return e, None
    vB, sB = _vertex((boot["means"] @ W.T) @ P.T, u[0], u[-1])
    e["unbracketed_share"] = float(np.mean(sB != 0))
    lnB = m + vB
    if side == 0:
        reps = np.where(sB == 0, lnB, sB * _SENTINEL)  # a minimum beyond the sizes: at that side
        tail = 100 * (1 - ci_level) / 2
        ends, inner = np.percentile(reps, [tail, 100 - tail]), lnB[sB == 0]
        if len(inner) > 2 and inner.min() <= ends[0] and ends[1] <= inner.max():
            f, _ = t_factor(lnB, boot["means"], boot["var"], boot["counts"], ci_level)
            ci, _ = calibrated_interval(m + float(v), reps, ci_level, f)
            e["N_opt_ci"] = [math.exp(ci[0]), math.exp(ci[1])]
        else:
            e["reason"] = (f"the minimum leaves the sizes in {100 * e['unbracketed_share']:.0f} % of resamples "
                           f"(the interval's tails hold {tail:g} % each): its interval is not bounded by them")
    return e, lnB


def _masked_slope(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row of ``Y`` (NaN: left out) on ``x``; NaN below 2 points."""
    w = np.isfinite(Y)
    n = w.sum(axis=1)
    Yz = np.where(w, Y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        xb = (w * x).sum(axis=1) / n
        yb = Yz.sum(axis=1) / n
        dx = np.where(w, x - xb[:, None], 0.0)
        sxx = (dx * dx).sum(axis=1)
        slope = (dx * (Yz - yb[:, None])).sum(axis=1) / sxx
    return np.where((n >= 2) & (sxx > 0), slope, np.nan)


def _exponents(levels: list[dict], lnB: list, boot: dict | None, ci_level: float) -> dict[str, Any]:
    """``a`` (slope of ln N_opt on ln C over the levels with a bracketed minimum), ``b = 1 - a``
    and their intervals; each resample's slope uses those of the same levels it brackets."""
    # a level whose interval is unbounded or passes its sizes is left out: its minimum may lie
    # beyond them, and kept only when noise moved the vertex inwards it would flatten a
    J = [i for i, e in enumerate(levels) if e["N_opt"] is not None and (boot is None or (
        e["N_opt_ci"] is not None and e["N"][0] <= e["N_opt_ci"][0] and e["N_opt_ci"][1] <= e["N"][-1]))]
    for i, e in enumerate(levels):
        if e["N_opt"] is not None and i not in J and e["reason"] is None:
            e["reason"] = "its interval passes the sizes (the minimum may lie beyond them): left out of a"
    out: dict[str, Any] = {"a": None, "a_ci": None, "b": None, "b_ci": None, "reason": None}
    if len(J) < 2:
        out["reason"] = (f"{len(J)} of {len(levels)} compute levels have a minimum inside the sizes"
                         + (" (with its interval)" if boot is not None else "") + ": the exponents a and b need 2")
        return out
    x = np.log([levels[i]["C"] for i in J])
    a = float(_masked_slope(x, np.log([[levels[i]["N_opt"] for i in J]]))[0])
    out.update(a=a, b=1 - a)
    if boot is None:
        return out
    reps = _masked_slope(x, np.column_stack([lnB[i] for i in J]))
    failed = float(np.mean(~np.isfinite(reps)))
    if failed > (1 - ci_level) / 2:
        out["reason"] = (f"in {100 * failed:.0f} % of resamples fewer than 2 of these levels have a minimum "
                         "inside the sizes: a has no interval")
        return out
    ci = _interval(a, reps, boot, ci_level)
    if ci:
        out.update(a_ci=ci, b_ci=[1 - ci[1], 1 - ci[0]])
    return out


def _isoflop(N, D, L, cells, C_levels, n_levels: int, n_boot: int, seed: int, ci_level: float) -> dict[str, Any]:
    """:func:`isoflop_profiles` on checked inputs (``C_levels`` None: the default levels)."""
    from astropt.resample import group_variances, resample_within_groups

    codes, labels, cellN, cellD = _cell_values(N, D, cells)
    y, k = np.log(L), len(labels)
    ybar = np.bincount(codes, y, minlength=k) / np.bincount(codes, minlength=k)
    out: dict[str, Any] = {
        "method": ("Chinchilla approach 2 (IsoFLOP profiles): cell means of ln L interpolated linearly in ln D "
                   "along each size (no extrapolation), a least-squares parabola of ln L in ln N at each compute "
                   "C = 6ND, a = slope of ln N_opt on ln C; bootstrap over runs within cells "
                   f"({int(n_boot)} resamples), t-calibrated percentile intervals"),
        "levels": [], "a": None, "a_ci": None, "b": None, "b_ci": None, "n_levels": 0, "n_bracketed": 0,
        "n_boot": int(n_boot), "ci_level": ci_level, "reason": None,
    }
    n_N, n_D = len(np.unique(cellN)), len(np.unique(cellD))
    if n_D < 2:
        out["reason"] = (f"the grid has one token budget (D = {cellD[0]:.3g}): each size sits at one compute, "
                         "so no IsoFLOP profile can be drawn")
        return out
    if n_N < 3:
        out["reason"] = f"the grid has {n_N} model size(s): a parabola in ln N needs 3"
        return out
    budgets = _size_budgets(cellN, cellD)
    if C_levels is None:
        C_levels = _default_levels(budgets, n_levels)
        if C_levels is None:
            out["reason"] = ("no compute C is reached by 3 sizes inside their token budgets "
                             "(their ranges of 6 N D do not overlap)")
            return out
    boot = None
    if n_boot > 0:
        _, means = resample_within_groups(y, codes, int(n_boot), np.random.default_rng(seed))
        var, counts = group_variances(y, codes)
        boot = {"means": means, "var": var, "counts": counts}
    entries, lnB = [], []
    for C in C_levels:
        entry, reps = _level_entry(float(C), *_profile(float(C), budgets, k), ybar, boot, ci_level)
        entries.append(entry)
        lnB.append(reps)
    out.update(levels=entries, n_levels=len(entries), n_bracketed=sum(e["N_opt"] is not None for e in entries))
    out.update(_exponents(entries, lnB, boot, ci_level))
    return out


def isoflop_profiles(
    N: Sequence[float],
    D: Sequence[float],
    L: Sequence[float],
    cells: Sequence | None = None,
    *,
    levels: Sequence[float] | None = None,
    n_levels: int = 5,
    n_boot: int = N_BOOT,
    seed: int = 0,
    ci_level: float = CI_LEVEL,
) -> dict[str, Any]:
    """Chinchilla's approach 2 on a grid of sizes x token budgets: IsoFLOP profiles.

    At each compute ``C = 6 N D``, each size's loss at ``D = C / (6 N)`` is interpolated
    linearly in ``(ln D, ln L)`` between its cells' mean ln L, only inside the budgets it was
    trained with (no extrapolation). With 3 or more sizes, a least-squares parabola in ln N is
    fitted to ln L (not L: the noise is multiplicative, as in :func:`fit_grid`); its minimum
    ``N_opt = exp(-c1 / (2 c2))`` counts when ``c2 > 0`` and it lies inside the sizes. ``a`` is
    the slope of ln N_opt on ln C over the levels whose minimum the sizes pin down (bracketed
    and, with resamples, its interval bounded and inside the sizes; with ``n_boot = 0`` every
    bracketed level), ``b = 1 - a``, ``D_opt = C / (6 N_opt)``.

    Bootstrap: runs resampled within cells (ln L), everything recomputed at the same levels,
    t-calibrated percentile intervals as in :func:`fit_grid`. A resample whose minimum leaves
    the sizes counts in ``unbracketed_share`` and enters the level's interval at that side: when
    it reaches the interval's tail, the level has no interval. A resample's ``a`` uses the
    point estimate's levels that it brackets (none below 2; ``a`` has no interval when more
    resamples than the tail have none).

    What the data cannot tell, said in a ``reason`` rather than printed: a minimum outside the
    sizes (the vertex is not extrapolated), a level whose interval passes the sizes (left out
    of ``a``: kept only when noise moved its vertex inwards, it flattens ``a``), ``a`` from
    fewer than 2 levels. The parabola only approximates a profile that is not symmetric in ln N
    (Chinchilla's is not): its vertex is biased where the sizes span far more than the
    minimum's width. Levels share cells, so their N_opt are not independent (the bootstrap
    sees this; a regression's own standard error would not).

    Args:
        N, D, L: Parameters, training tokens and final validation loss of each run.
        cells: Each run's cell label (one (N, D) pair each); default: the distinct pairs.
        levels: Compute values (FLOPs); default: ``n_levels`` log-spaced over the range of C
            that at least 3 sizes reach inside their budgets.
        n_levels: Number of default levels.
        n_boot: Bootstrap resamples (0: no intervals, ``unbracketed_share`` None).
        seed: Seed of the bootstrap.
        ci_level: Interval level.

    Returns:
        ``{"method", "levels": [{"C", "N", "D", "L" (the sizes used, ascending N; L the
        interpolated geometric-mean loss), "parabola": [c2, c1, c0] of ln L in ln N or None,
        "N_opt", "L_opt", "N_opt_ci", "D_opt", "unbracketed_share", "reason"}], "a", "a_ci",
        "b", "b_ci", "n_levels", "n_bracketed", "n_boot", "ci_level", "reason"}``: a level's
        ``reason`` says why it has no N_opt, no interval or is left out of ``a``; the top one
        why ``a`` or its interval is missing, or why there are no levels.

    Raises:
        ValueError: On mismatched lengths, values that are not finite and positive, a cell of
            several (N, D) pairs, or levels that are not positive.
    """
    N, D, L = _check_runs(N, D, L)
    C_levels = None if levels is None else _positive_levels(levels, "levels")
    if levels is None and not (isinstance(n_levels, (int, np.integer)) and n_levels >= 1):
        raise ValueError(f"n_levels must be a positive integer, got {n_levels!r}")
    return _isoflop(N, D, L, cells, C_levels, int(n_levels), int(n_boot), seed, ci_level)


# --------------------------------------------------------------------------- the held-out corner


def holdout_corner(
    N: Sequence[float],
    D: Sequence[float],
    L: Sequence[float],
    cells: Sequence | None = None,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    ci_level: float = CI_LEVEL,
) -> dict[str, Any]:
    """Hold out the cell of largest compute ``C = 6 N D`` (all its runs), fit the others with
    :func:`fit_grid`, and compare the held-out runs with the law's prediction.

    The prediction interval is for the geometric mean of the ``m`` held-out runs (the mean of
    their ln L, as the fit sees them), like :func:`astropt.scaling.holdout_test`: each
    replicate is a bootstrap refit's prediction plus the mean of ``m`` draws of the run-to-run
    noise (the fitted cells' pooled within-cell deviations of ln L, inflated as the runs are),
    t-calibrated with the noise's own degrees of freedom. It tests the law where it
    extrapolates furthest in compute, but only in the direction the grid allows (a corner of
    the largest N and D still lies inside each one's range when the grid is not rectangular),
    and a pass with a wide interval is a weak test; with one run per fitted cell the noise
    cannot be estimated and there is no interval. Ties of C go to the larger N.

    Returns:
        ``{"N", "D", "C", "cell", "n_runs", "observed" (geometric mean of the held-out runs'
        losses), "runs", "predicted", "pi": [lo, hi], "ci_level", "verdict", "reason"}``;
        ``predicted``, ``pi`` and ``verdict`` None (``reason`` saying why) when the other
        cells leave a parameter unidentified or fewer than 5 runs, or give no interval.

    Raises:
        ValueError: On mismatched lengths, values that are not finite and positive, or a cell
            of several (N, D) pairs.
    """
    from astropt.resample import pooled_noise

    N, D, L = _check_runs(N, D, L)
    codes, labels, cellN, cellD = _cell_values(N, D, cells)
    g = int(np.lexsort((cellD, cellN, cellN * cellD))[-1])
    held = codes == g
    runs = L[held]
    out: dict[str, Any] = {"N": float(cellN[g]), "D": float(cellD[g]), "C": float(6 * cellN[g] * cellD[g]),
                           "cell": str(labels[g]) if cells is not None else f"N={cellN[g]:.4g}, D={cellD[g]:.4g}",
                           "n_runs": int(held.sum()),
                           "observed": float(np.exp(np.mean(np.log(runs)))), "runs": runs.tolist(),
                           "predicted": None, "pi": None, "ci_level": ci_level, "verdict": None, "reason": None}
    rest = ~held
    if rest.sum() < 5:
        out["reason"] = f"holding out the corner leaves {int(rest.sum())} runs: the law's 5 parameters need 5"
        return out
    rest_cells = None if cells is None else [c for c, r in zip(cells, rest) if r]
    fit, state = _fit_grid(N[rest], D[rest], L[rest], rest_cells, n_boot=n_boot, seed=seed,
                           ci_level=ci_level)
    missing = sorted({why for k, why in fit["unidentified"].items() if k in PARAMS})
    if missing:
        out["reason"] = f"the other cells do not identify the law ({'; '.join(missing)}): no prediction"
        return out
    out["predicted"] = predicted = float(predict(fit, out["N"], out["D"]))
    boot, m = state["boot"], out["n_runs"]
    if boot is None:
        out["reason"] = "no resamples (n_boot = 0): no prediction interval"
    elif not (state["counts"] > 1).any():
        out["reason"] = "no fitted cell has two runs: the run-to-run noise is unknown, no prediction interval"
    if out["reason"]:
        return out
    A, B, E, alpha, beta = (boot[:, _NAMED.index(k)] for k in PARAMS)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        base = np.log(E + A / out["N"] ** alpha + B / out["D"] ** beta)
    reps = base + pooled_noise(np.log(L[rest]), codes[rest], m, len(base), np.random.default_rng((seed, 1)))
    ci = _interval(math.log(predicted), reps, state, ci_level, noise_runs=m)
    if ci is None:
        out["reason"] = "every refit failed: no prediction interval"
        return out
    out["pi"] = [math.exp(ci[0]), math.exp(ci[1])]
    out["verdict"] = _corner_verdict(out, len(set(codes[rest].tolist())), labelled=cells is not None)
    return out


def interval_verdict(head: str, obs: float, pi: Sequence[float], predicted: float, ci_level: float, n_runs: int,
                     above: str, below: str) -> str:
    """``head`` and where the observed mean ``obs`` falls against the prediction interval ``pi``
    in one sentence, a miss stated plainly (``above`` / ``below``: what a miss on that side means)."""
    lo, hi = pi
    where = f"the {100 * ci_level:g} % prediction interval [{lo:.4g}, {hi:.4g}] for the mean of {runs_text(n_runs)}"
    if lo <= obs <= hi:
        half = 100 * (hi - lo) / 2 / predicted
        weak = f" (a weak test: the interval spans ±{half:.0f} % of the prediction)" if half > 10 else ""
        return f"{head}, inside {where}: the law passes this test{weak}"
    side = "above" if obs > hi else "below"
    gap = obs / hi - 1 if side == "above" else 1 - obs / lo
    return f"{head}, {side} {where} by {100 * gap:.1f} %: MISSED, {above if side == 'above' else below}"


def _corner_verdict(h: dict, n_cells: int, labelled: bool) -> str:
    """The held-out corner's comparison in one sentence, a miss stated plainly."""
    cell = f"cell {h['cell']} " if labelled else "cell "
    head = (f"the law fitted on the other {n_cells} cells predicts {h['predicted']:.4g} for the largest-compute {cell}"
            f"(N = {h['N']:.3g}, D = {h['D']:.3g}, C = {h['C']:.3g} FLOPs); its {runs_text(h['n_runs'])} averaged "
            f"{h['observed']:.4g}")
    return interval_verdict(
        head, h["observed"], h["pi"], h["predicted"], h["ci_level"], h["n_runs"],
        "a higher loss than the law predicts: the gains from size and data fall off at this compute",
        "a lower loss than the law predicts: the gains are larger than extrapolated")


def grid_study(runs, *, n_boot: int = N_BOOT, seed: int = 0, ci_level: float = CI_LEVEL, log=print) -> dict[str, Any]:
    """Everything the workflow reports about an N x D grid of runs (``fit.json``'s ``grid``).

    Args:
        runs: One row per run (:func:`astropt.runs.load_sidecars`): ``params`` (N),
            ``tokens_seen`` (D), ``val_loss``, ``size`` and ``budget`` (a cell is one size at
            one budget; its seeds are its replicates).
        n_boot, seed, ci_level: The bootstrap of every fit (resampling runs within cells).
        log: Progress lines.

    Returns:
        ``{"approach3": fit_grid(...) with its frontier band, "isoflop": isoflop_profiles(...),
        "holdout": holdout_corner(...)}``, JSON-able.
    """
    N = runs["params"].to_numpy(np.float64)
    D = runs["tokens_seen"].to_numpy(np.float64)
    L = runs["val_loss"].to_numpy(np.float64)
    cells = (runs["size"].astype(str) + "/" + runs["budget"].astype(str)).tolist()
    C = 6.0 * N * D
    frontier_C = np.geomspace(C.min() / 3, C.max() * 10, 40)
    log(f"N x D grid: {len(L)} runs in {len(set(cells))} cells ({len(np.unique(N))} sizes x "
        f"{len(np.unique(D))} token counts); fitting L = E + A/N^alpha + B/D^beta ({n_boot} resamples)")
    out = {"approach3": fit_grid(N, D, L, cells, n_boot=n_boot, seed=seed, ci_level=ci_level, frontier_C=frontier_C)}
    log("IsoFLOP profiles (approach 2)")
    out["isoflop"] = isoflop_profiles(N, D, L, cells, n_boot=n_boot, seed=seed, ci_level=ci_level)
    log("holding out the largest-compute cell and predicting it")
    out["holdout"] = holdout_corner(N, D, L, cells, n_boot=n_boot, seed=seed, ci_level=ci_level)
    return to_jsonable(out)
