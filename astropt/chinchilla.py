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

each exponent with its bootstrap interval.

What a grid cannot tell is said, not printed as a number: with one value of ``D`` (or
``N``) in the grid, ``beta`` and ``B`` (or ``alpha`` and ``A``) are not identified, and
neither are the compute-optimal exponents; :func:`fit_grid` then leaves them ``None`` with
the reason.

Example::

    fit = fit_grid(N, D, L, cells, n_boot=1000)
    print(fit["alpha"], fit["alpha_ci"], fit["a"], fit["a_ci"])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import optimize
from scipy.special import logsumexp

HUBER_DELTA = 1e-3
CI_LEVEL = 0.95
N_BOOT = 1000
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


def fit_grid(
    N: Sequence[float],
    D: Sequence[float],
    L: Sequence[float],
    cells: Sequence | None = None,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    ci_level: float = CI_LEVEL,
    delta: float = HUBER_DELTA,
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
        delta: Huber delta on log residuals.

    Returns:
        ``A, B, E, alpha, beta`` and the compute-optimal exponents ``a`` (N_opt ~ C^a) and
        ``b`` (D_opt ~ C^b) with ``G``, each with ``<name>_ci`` (t-calibrated bootstrap
        percentile interval; None without resamples or when not identified); ``n_runs``,
        ``n_cells``, ``n_N``, ``n_D`` (distinct values), ``n_boot``, ``boot_failed``, and
        ``unidentified``: parameter -> why the grid cannot tell it.

    Raises:
        ValueError: On mismatched lengths, non-positive values or fewer than 5 runs.
    """
    from astropt.resample import calibrated_interval, calibration_factor, group_codes, group_shares
    from astropt.resample import group_variances, resample_within_groups, satterthwaite

    N, D, L = (np.asarray(v, dtype=np.float64) for v in (N, D, L))
    if not len(N) == len(D) == len(L):
        raise ValueError(f"N, D and L must have one value per run, got {len(N)}, {len(D)}, {len(L)}")
    if len(L) < 5:
        raise ValueError(f"a fit of 5 parameters needs at least 5 runs, got {len(L)}")
    for name, v in (("N", N), ("D", D), ("L", L)):
        if not (np.isfinite(v).all() and (v > 0).all()):
            raise ValueError(f"{name} must be finite and positive")
    if cells is None:
        cells = [f"{n:g}|{d:g}" for n, d in zip(N, D)]
    codes, labels = group_codes(list(cells))
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
    boot = None
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        Y, means = resample_within_groups(y, codes, n_boot, rng)
        # each resample refitted from the point estimate and its own best grid starts (a
        # warm start alone stays where the near-L1 Huber loss has a kink)
        boot = np.array([_named_vector(_minimise(x, Yb, [p, *_grid_starts(x, Yb, delta, keep=2)], delta)) for Yb in Y])
        var, counts = group_variances(y, codes)
    for i, name in enumerate(_NAMED):
        value = point[name]
        out[name] = None if name in unidentified else value
        ci = None
        if boot is not None and name not in unidentified:
            reps = boot[:, i]
            ok = np.isfinite(reps)
            if ok.sum() > 2:
                shares = group_shares(reps, means)
                with np.errstate(invalid="ignore"):
                    v = shares**2 * var / counts
                nu = satterthwaite([(vi, ni - 1) for vi, ni in zip(v, counts) if ni > 1])
                ci, _ = calibrated_interval(value, reps[ok], ci_level, calibration_factor(nu, ci_level))
        out[f"{name}_ci"] = ci
    identified = [i for i, name in enumerate(_NAMED) if name not in unidentified]
    out["boot_failed"] = int((~np.isfinite(boot[:, identified]).all(axis=1)).sum()) if boot is not None else 0
    return out


_NAMED = ("A", "B", "E", "alpha", "beta", "a", "b", "G")


def _named_vector(p: np.ndarray) -> np.ndarray:
    d = _named(p)
    return np.array([d[k] for k in _NAMED])


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
