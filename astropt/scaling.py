"""Scaling-law fits of final validation loss against parameters or training compute.

Two laws are fitted, side by side, against any positive variable ``X``: the parameter
count ``N`` or the training compute ``C`` (FLOPs):

- the saturating power law of Henighan et al. (2020), used by the AstroPT paper,
  ``L(X) = L_inf + (X_c / X)^alpha``, by bounded non-linear least squares on
  ``log L`` (losses carry multiplicative noise), globally over ``alpha``: the loss
  is minimised over ``(L_inf, X_c)`` on a grid of ``alpha``, and the best grid
  points are polished over all three parameters (a small Levenberg-Marquardt);
- the plain power law ``L(X) = (X_c / X)^alpha``, a straight line in log-log
  space fitted by linear regression: always well defined for two or more
  points, and the fallback when the saturating fit is degenerate.

Uncertainties. Every parameter gets a standard error (``*_err``, from the
covariance of the fit scaled by the residual variance) and a confidence interval
at ``ci_level`` (default 0.95; ``*_ci = [lo, hi]``), with the residual degrees of
freedom ``dof``:

- power law: Student-t intervals ``alpha +- t(dof) * err``, exact for a straight
  line with Gaussian noise in ``log L``; for ``log10_X_c = -intercept / slope`` the
  Fieller interval (also exact; ``None`` when the slope is not significant at
  ``ci_level``, since the set is then unbounded).
- saturating law: profile-likelihood intervals, ``{theta : RSS_profile(theta) <=
  RSS_min (1 + t(dof)^2 / dof)}``, the F-calibrated profile-t intervals of Bates &
  Watts (1988, ch. 6), which reduce to the exact t intervals for a linear model.
  Why not covariance + t: the law is non-linear in ``(L_inf, alpha, X_c)``. Where
  the data resolve the curvature well the two agree; where they barely do, the
  symmetric intervals miss ``L_inf`` and ``X_c`` more often than stated, run below
  ``L_inf = 0`` and ignore the asymmetry of the likelihood. Simulated, 7 sizes over
  2.5 decades (N = 3e4 .. 1e7), 2 % log-normal noise, 400 data sets each, 95 %:

  ====================================  ======================  ======================
  true law                               covariance + t           profile (this module)
                                         alpha / L_inf / X_c      alpha / L_inf / X_c
  ====================================  ======================  ======================
  0.05 + (1e3/N)^0.3                     0.963 / 0.963 / 0.970    0.963 / 0.955 / 0.970
  0.04 + (1e2/N)^0.6 (floor reached)     0.958 / 0.950 / 0.958    0.960 / 0.960 / 0.963
  0.05 + (1e3/N)^0.1 (weak curvature)    0.966 / 0.888 / 0.897    0.957 / 0.957 / 0.983
  ====================================  ======================  ======================

  (weak curvature: rates among the 233 of 400 fits that are not degenerate; the
  others are flagged, mostly ``L_inf`` at 0, and have no intervals.)
  ``tests/test_scaling.py`` checks the first row's law on 300 other data sets
  (0.963 / 0.953 / 0.967) against a binomial band around 0.95.
  The intervals are found on batches of held values (a Levenberg-Marquardt fit of
  the two other parameters at each), bracketing where the profile-t statistic
  ``tau = sqrt((RSS_profile - RSS_min) / s^2)`` crosses ``t(dof)`` and
  interpolating; they are deterministic (no resampling, no seed).
  An interval end that reaches a bound of the search (``0 <= L_inf <= max L``,
  ``0 < alpha <= 5``, ``log10_X_c`` within 30 decades of the data) is that bound,
  marked in ``ci_open`` (``{"alpha": [lower_open, upper_open], ...}``): the data
  set no limit there.

With few sizes the saturating fit is often degenerate: ``L_inf`` collapses onto 0
(no saturation seen), ``alpha`` onto a bound (a step: the loss stops falling), the
covariance is singular, or there are no spare degrees of freedom. The result then
says so (``"degenerate": True`` and a ``reason``) and gives no intervals (``None``)
instead of meaningless ones; the power law then remains.

Fits over runs. A sweep trains each size several times (``train.seeds``).
:func:`fit_runs` fits every run's loss (the analytic intervals above then see the run-to-run
scatter) and adds, per law, a bootstrap over runs resampled within each size, each resample
refitted (percentile intervals with the small-sample corrections of :mod:`astropt.resample`),
a pointwise bootstrap band of the fitted loss, an F-test of the floor ``L_inf`` with the AIC of
both laws and a lack-of-fit test of each against the runs' own scatter (:func:`compare_laws`,
giving the ``preferred`` law). ``estimator="huber"`` fits by Besiroglu et al.'s (2024) summed
Huber loss of log residuals instead. :func:`holdout_test` fits without one size and predicts
it with bootstrap prediction intervals; :func:`headline` says whether a fit's law may be
quoted; :func:`fit_study` assembles the scaling rule's ``fit.json``.

:func:`write_fits` is the scaling rule's stage: the runs' ``ckpt.json`` in; ``losses.csv``,
``fit.json`` and the tables (:mod:`astropt.tables`) out.

Example::

    fit = fit_scaling_laws(table["flops"], table["val_loss"], variable="C")
    json.dump(fit, open("fit.json", "w"), indent=2)
    curve = predict(fit, np.logspace(12, 15))
    print(astropt.tables.table_markdown(astropt.tables.fit_table({"compute": fit})))
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from astropt.chinchilla import HUBER_DELTA, grid_study, interval_verdict
from astropt.compute import compute_table
from astropt.config import CI_LEVEL, N_BOOT
from astropt.io import atomic_write, runs_text, to_jsonable
from astropt.runs import load_sidecars
from astropt.tables import VARIABLES, compute_markdown, fit_table, grid_latex, grid_markdown, table_cells, table_latex, table_markdown

#: Upper bound of the exponent in the saturating fit.
ALPHA_MAX = 5.0
#: Lower bound of the exponent in the saturating fit.
ALPHA_MIN = 1e-6
#: Exponents where the saturating loss is minimised over (L_inf, X_c) to find the global fit.
ALPHA_GRID = np.geomspace(1e-3, ALPHA_MAX, 24)
#: Profile intervals of log10 X_c are searched this many decades beyond the data.
LOG10_SCALE_SPAN = 30.0

Law = Literal["saturating", "power_law"]
LN10 = math.log(10.0)


def model_string(variable: str = "N", law: Law = "saturating") -> str:
    """The formula of a law, e.g. ``"L = L_inf + (N_c/N)^alpha"``."""
    reducible = f"({variable}_c/{variable})^alpha"
    return f"L = L_inf + {reducible}" if law == "saturating" else f"L = {reducible}"


def _as_float(value: Any) -> float:
    """A fit value that may be None (from JSON) as a float, None -> NaN."""
    return float("nan") if value is None else float(value)


def _check_inputs(X: Sequence[float], L: Sequence[float], variable: str = "N") -> tuple[np.ndarray, np.ndarray]:
    if variable not in VARIABLES:
        raise ValueError(f"variable must be one of {sorted(VARIABLES)} ({VARIABLES}), got {variable!r}")
    X = np.asarray(X, dtype=np.float64).ravel()
    L = np.asarray(L, dtype=np.float64).ravel()
    what = f"{variable} ({VARIABLES[variable]})"
    if len(X) != len(L):
        raise ValueError(f"{variable} and L differ in length: {len(X)} values of {what}, {len(L)} losses")
    if len(X) < 2:
        raise ValueError(f"a scaling fit needs at least 2 ({variable}, L) points, got {len(X)}")
    for name, values in ((what, X), ("L (losses)", L)):
        bad = ~np.isfinite(values) | (values <= 0)
        if bad.any():
            raise ValueError(
                f"{name} must be finite and positive; bad values at positions "
                f"{np.flatnonzero(bad).tolist()}: {values[bad].tolist()}"
            )
    if np.unique(X).size < 2:
        raise ValueError(f"{variable} needs at least 2 distinct values of {VARIABLES[variable]}, got {np.unique(X)}")
    return X, L


def _t_quantile(ci_level: float, dof: int) -> float:
    return float(stats.t.ppf(0.5 + ci_level / 2, dof)) if dof >= 1 else float("nan")


def _check_level(ci_level: float) -> None:
    if not 0 < ci_level < 1:
        raise ValueError(f"ci_level must lie strictly between 0 and 1, got {ci_level}")


# --------------------------------------------------------------------------- power law


def fit_power_law(
    X: Sequence[float], L: Sequence[float], variable: str = "N", ci_level: float = CI_LEVEL
) -> dict:
    """Fit ``L = (X_c / X)^alpha`` by linear regression of log10 L on log10 X.

    Args:
        X: Values of the variable (parameter counts for ``"N"``, FLOPs for ``"C"``).
        L: Losses, one per value.
        variable: ``"N"`` or ``"C"``: names the scale (``N_c`` or ``C_c``).
        ci_level: Confidence level of the intervals.

    Returns:
        ``{"model", "variable", "{X}_c", "log10_{X}_c", "log10_{X}_c_err",
        "log10_{X}_c_ci", "{X}_c_ci", "alpha", "alpha_err", "alpha_ci", "ci_level",
        "ci_method", "ci_open", "dof", "r2", "rss", "degenerate", "reason"}``
        (``{X}`` the variable). With only two points (``dof`` 0) errors are NaN,
        intervals ``None`` and ``degenerate`` True. ``alpha_ci`` is Student-t; the
        scale's is Fieller's, ``None`` when unbounded. A negative ``alpha`` means
        the loss grew with ``X``.

    Raises:
        ValueError: For fewer than 2 points, non-positive values, mismatched lengths
            or an unknown variable.
    """
    X, L = _check_inputs(X, L, variable)
    _check_level(ci_level)
    x, y = np.log10(X), np.log10(L)
    res = stats.linregress(x, y)
    # log10 L = alpha log10 X_c - alpha log10 X: slope = -alpha, intercept = alpha log10 X_c.
    alpha = -res.slope
    n = len(x)
    dof = n - 2
    rss = float(np.sum((y - res.intercept - res.slope * x) ** 2))
    if dof > 0:
        var_s, var_b = res.stderr**2, res.intercept_stderr**2
        cov_bs = -np.mean(x) * var_s  # OLS covariance of intercept and slope
    else:
        var_s = var_b = cov_bs = float("nan")
    t = _t_quantile(ci_level, dof)
    if alpha != 0:
        log10_c = res.intercept / alpha
        # Delta method for log10_X_c = -b / s.
        db, ds = -1.0 / res.slope, res.intercept / res.slope**2
        var_c = db**2 * var_b + ds**2 * var_s + 2 * db * ds * cov_bs
        log10_c_err = math.sqrt(var_c) if var_c >= 0 else float("nan")
    else:
        log10_c = log10_c_err = float("nan")
    alpha_err = math.sqrt(var_s)
    alpha_ci = [alpha - t * alpha_err, alpha + t * alpha_err] if dof > 0 else None
    c_ci = _fieller(res.intercept, res.slope, var_b, var_s, cov_bs, t) if dof > 0 else None
    v = variable
    return {
        "model": model_string(v, "power_law"),
        "variable": v,
        f"{v}_c": 10.0**log10_c if abs(log10_c) < 300 else float("nan"),
        f"log10_{v}_c": log10_c,
        f"log10_{v}_c_err": log10_c_err,
        f"log10_{v}_c_ci": c_ci,
        f"{v}_c_ci": _pow10(c_ci),
        "alpha": alpha,
        "alpha_err": alpha_err,
        "alpha_ci": alpha_ci,
        "ci_level": ci_level,
        "ci_method": "Student-t (alpha), Fieller (scale): exact for Gaussian noise in log L",
        "ci_open": {"alpha": [False, False], f"log10_{v}_c": [False, False]},
        "dof": dof,
        "r2": res.rvalue**2,
        "rss": rss,
        "fit_space": "log10 L",
        "degenerate": dof < 1 or not math.isfinite(alpha_err),
        "reason": (
            "2 points for 2 parameters: no degrees of freedom left for errors" if dof < 1
            else "the slope's standard error is undefined (e.g. every loss the same)"
            if not math.isfinite(alpha_err) else ""
        ),
    }


def _fieller(b: float, s: float, var_b: float, var_s: float, cov: float, t: float) -> list[float] | None:
    """Fieller interval of ``x0 = -b / s`` (where the line ``b + s x`` crosses 0).

    ``{x0 : (b + s x0)^2 <= t^2 var(b + s x0)}``, a quadratic inequality in ``x0``;
    ``None`` when its solution is not a bounded interval (slope not significant).
    """
    qa = s * s - t * t * var_s
    qb = 2 * (b * s - t * t * cov)
    qc = b * b - t * t * var_b
    disc = qb * qb - 4 * qa * qc
    if not (np.isfinite(qa) and qa > 0 and disc >= 0):
        return None
    root = math.sqrt(disc)
    return sorted([(-qb - root) / (2 * qa), (-qb + root) / (2 * qa)])


def _pow10(ci: Sequence[float] | None) -> list[float] | None:
    if ci is None:
        return None
    return [10.0**v if abs(v) < 300 else float("nan") for v in ci]


# --------------------------------------------------------------------------- saturating law


def _lm(
    fun: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    p0: Sequence[float],
    lo: np.ndarray,
    hi: np.ndarray,
    max_iter: int = 100,
) -> tuple[np.ndarray, float]:
    """Levenberg-Marquardt with box bounds (projected steps) for a few parameters.

    ``fun(p)`` returns the residuals and their Jacobian. A parameter at a bound whose
    gradient points outward is held there. Stops when the linearised model predicts
    no appreciable decrease. Returns the parameters and the residual sum of squares.
    """
    p = np.minimum(np.maximum(np.asarray(p0, dtype=np.float64), lo), hi)
    with np.errstate(all="ignore"):
        r, J = fun(p)
    cost = float(r @ r)
    if not math.isfinite(cost):
        return p, float("inf")
    lam = 1e-4
    for _ in range(max_iter):
        if cost <= 1e-30:  # exact fit
            break
        g = J.T @ r
        A = J.T @ J
        free = ~(((p <= lo) & (g > 0)) | ((p >= hi) & (g < 0)))
        if not free.all():
            if not free.any():
                break
            A, g = A[free][:, free], g[free]
        D = np.diag(np.maximum(A.diagonal(), 1e-12 * max(float(A.diagonal().max()), 1e-300)))
        for _ in range(12):
            try:
                step = np.linalg.solve(A + lam * D, -g)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            # The decrease of the cost that the linearised model predicts for this step.
            predicted = -2 * float(g @ step) - float(step @ A @ step)
            if predicted <= 1e-12 * cost:
                return p, cost  # converged: no step lowers the cost appreciably
            p_new = p.copy()
            p_new[free] += step
            p_new = np.minimum(np.maximum(p_new, lo), hi)
            with np.errstate(all="ignore"):
                r_new, J_new = fun(p_new)
            cost_new = float(r_new @ r_new)
            if cost_new < cost:  # False for NaN
                break
            lam *= 10
        else:
            break  # no step lowers the cost: converged
        small = cost - cost_new <= 1e-12 * cost
        p, r, J, cost = p_new, r_new, J_new, cost_new
        lam = max(lam / 10, 1e-12)
        if small:
            break
    return p, cost


def _lm2(
    fun: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
    P0: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    max_iter: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_lm` for K independent two-parameter problems at once.

    ``fun(P)`` takes parameters (K, 2) and returns residuals (K, n) and the two
    columns of their Jacobians, (K, n) each. Returns parameters (K, 2) and RSS (K,).
    """
    P = np.minimum(np.maximum(np.array(P0, dtype=np.float64), lo), hi)
    with np.errstate(all="ignore"):
        r, J0, J1 = fun(P)
        cost = np.einsum("kn,kn->k", r, r)
    done = ~np.isfinite(cost)
    cost[done] = np.inf
    lam = np.full(len(P), 1e-4)
    for _ in range(max_iter):
        done |= cost <= 1e-30
        if done.all():
            break
        g = np.stack([np.einsum("kn,kn->k", J0, r), np.einsum("kn,kn->k", J1, r)], axis=1)
        a00, a11, a01 = (np.einsum("kn,kn->k", J0, J0), np.einsum("kn,kn->k", J1, J1),
                         np.einsum("kn,kn->k", J0, J1))
        # Hold a parameter at a bound whose gradient points outward.
        held = ((P <= lo) & (g > 0)) | ((P >= hi) & (g < 0))
        g[held] = 0.0
        a00 = np.where(held[:, 0], 1.0, a00)
        a11 = np.where(held[:, 1], 1.0, a11)
        a01 = np.where(held.any(axis=1), 0.0, a01)
        tiny = 1e-12 * np.maximum(np.maximum(a00, a11), 1e-300)
        m00, m11 = a00 + lam * np.maximum(a00, tiny), a11 + lam * np.maximum(a11, tiny)
        with np.errstate(all="ignore"):
            det = m00 * m11 - a01 * a01
            s0 = (-g[:, 0] * m11 + a01 * g[:, 1]) / det
            s1 = (-g[:, 1] * m00 + a01 * g[:, 0]) / det
            # The decrease of the cost that the linearised model predicts for this step.
            predicted = -2 * (g[:, 0] * s0 + g[:, 1] * s1) - (a00 * s0 * s0 + 2 * a01 * s0 * s1 + a11 * s1 * s1)
        done |= ~(predicted > 1e-12 * cost)  # converged (or a singular system)
        if done.all():
            break
        P_new = np.minimum(np.maximum(P + np.stack([s0, s1], axis=1), lo), hi)
        with np.errstate(all="ignore"):
            r_new, J0_new, J1_new = fun(P_new)
            cost_new = np.einsum("kn,kn->k", r_new, r_new)
        accept = ~done & (cost_new < cost)
        small = accept & (cost - cost_new <= 1e-12 * cost)
        P[accept], r[accept], J0[accept], J1[accept] = P_new[accept], r_new[accept], J0_new[accept], J1_new[accept]
        cost[accept] = cost_new[accept]
        lam = np.where(accept, np.maximum(lam / 10, 1e-12), lam * 10)
        done |= small | (lam > 1e12)  # a tiny decrease, or no step lowers the cost
    return P, cost


class _Saturating:
    """The saturating law fitted in ``log L``, as a function of ``x = log10 X``.

    Internally the parameters are ``(L_inf, b, alpha)`` with the reducible loss
    ``10^(b - alpha (x - xbar))``: ``b`` is its log10 at the data's centre ``xbar``,
    which decorrelates it from ``alpha``; ``log10 X_c = xbar + b / alpha``. The
    ``at_*`` methods give the profile, batched: the best fit with one parameter held,
    as parameters (K, 3) and RSS (K,) for K held values.
    """

    def __init__(self, x: np.ndarray, L: np.ndarray):
        self.x, self.L, self.y = x, L, np.log(L)
        self.xbar = float(x.mean())
        self.xc = x - self.xbar
        # A floor above every loss is never optimal (lowering it lowers every residual):
        # the largest loss bounds the search, not the fit.
        self.L_inf_max = float(L.max())
        self.lo = np.array([0.0, -60.0, ALPHA_MIN])
        self.hi = np.array([self.L_inf_max, 60.0, ALPHA_MAX])

    def model(self, L_inf: np.ndarray, b: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, ...]:
        """Residuals in log L (K, n) and their derivatives in L_inf, b and alpha (K, n) each."""
        R = 10.0 ** (b[:, None] - alpha[:, None] * self.xc)
        M = L_inf[:, None] + R
        g = LN10 * R / M
        return np.log(M) - self.y, 1.0 / M, g, -g * self.xc

    def resid_jac(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Residuals (n,) and Jacobian (n, 3) at one parameter vector (L_inf, b, alpha)."""
        r, *J = self.model(p[:1], p[1:2], p[2:])
        return r[0], np.stack([j[0] for j in J], axis=1)

    def full(self, start: Sequence[float]) -> tuple[np.ndarray, float]:
        """Best (L_inf, b, alpha) and RSS from ``start``."""
        return _lm(self.resid_jac, start, self.lo, self.hi)

    def at_alpha(self, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Profile at fixed exponents ``alpha`` (K,)."""
        alpha = np.atleast_1d(np.asarray(alpha, dtype=np.float64))
        # Start: weighted least squares of L = L_inf + A u, weights 1/L (~ log L residuals).
        w = 1.0 / self.L
        wu = w * 10.0 ** (-alpha[:, None] * self.xc)  # (K, n)
        s_aa, s_ac, s_cc = w @ w, wu @ w, np.einsum("kn,kn->k", wu, wu)
        s_a, s_c = w.sum(), wu.sum(axis=1)
        with np.errstate(all="ignore"):
            det = s_aa * s_cc - s_ac**2
            L_inf = np.clip((s_a * s_cc - s_ac * s_c) / det, 0.0, self.L_inf_max)
            A = (s_aa * s_c - s_ac * s_a) / det
        fallback = np.mean((self.L - L_inf[:, None]) * w / wu, axis=1)  # mean of (L - L_inf) / u
        A = np.where(np.isfinite(A) & (A > 0), A, np.maximum(fallback, 1e-6 * self.L.min()))
        L_inf = np.where(np.isfinite(L_inf), L_inf, 0.0)

        def fun(Q):
            r, dL, db, _ = self.model(Q[:, 0], Q[:, 1], alpha)
            return r, dL, db

        Q, rss = _lm2(fun, np.stack([L_inf, np.log10(A)], axis=1), self.lo[:2], self.hi[:2])
        return np.column_stack([Q, alpha]), rss

    def at_L_inf(self, L_inf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Profile at fixed floors ``L_inf`` (K,)."""
        L_inf = np.atleast_1d(np.asarray(L_inf, dtype=np.float64))
        # Start: a straight line through log10(L - L_inf) against the centred x.
        excess = self.L - L_inf[:, None]
        z = np.log10(np.maximum(excess, 0.05 * np.maximum(excess.max(axis=1, keepdims=True), 1e-12)))
        start = np.stack([z.mean(axis=1), -(z @ self.xc) / (self.xc @ self.xc)], axis=1)

        def fun(Q):
            r, _, db, da = self.model(L_inf, Q[:, 0], Q[:, 1])
            return r, db, da

        Q, rss = _lm2(fun, start, self.lo[1:], self.hi[1:])
        return np.column_stack([L_inf, Q]), rss

    def at_log10_c(self, c: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Profile at fixed scales ``c`` = log10 X_c (K,), from parameters ``start`` (K, 3)."""
        d = np.atleast_1d(np.asarray(c, dtype=np.float64)) - self.xbar  # b = alpha d

        def fun(Q):
            r, dL, db, da = self.model(Q[:, 0], Q[:, 1] * d, Q[:, 1])
            return r, dL, da + d[:, None] * db

        Q, rss = _lm2(fun, np.atleast_2d(start)[:, [0, 2]], self.lo[[0, 2]], self.hi[[0, 2]])
        return np.column_stack([Q[:, 0], Q[:, 1] * d, Q[:, 1]]), rss

    def fit(self) -> tuple[np.ndarray, float] | None:
        """Global fit: the best exponents of :data:`ALPHA_GRID`, each polished over all
        three parameters. Returns the parameters and their RSS; None if every fit failed."""
        grid, rss = self.at_alpha(ALPHA_GRID)
        if not np.isfinite(rss).any():
            return None
        # Local minima of the profile over the grid, best first (at most three).
        padded = np.concatenate([[np.inf], rss, [np.inf]])
        minima = [i for i in range(len(rss)) if padded[i + 1] <= padded[i] and padded[i + 1] <= padded[i + 2]]
        best = None
        for i in sorted(minima, key=lambda i: rss[i])[:3]:
            p, r = self.full(grid[i])
            if math.isfinite(r) and (best is None or r < best[1]):
                best = (p, r)
        return best

    def log10_c(self, p: Sequence[float]) -> float:
        return self.xbar + p[1] / p[2]


#: Round 1 of a profile interval: tau at these multiples of the Wald half-width on each
#: side, in stages (a later stage only for a side that has not crossed yet), then the bound.
_PROFILE_OFFSETS = (np.array([0.5, 1.0, 1.5, 2.0]), np.array([3.0, 5.0, 8.0, 14.0, 25.0, 50.0]))
#: Later rounds: this many equally spaced points inside each side's bracket, until tau
#: changes by less than _PROFILE_TAU_STEP * t across it (or _PROFILE_ROUNDS rounds).
_PROFILE_SUBDIVISIONS = 8
_PROFILE_TAU_STEP = 0.05
_PROFILE_ROUNDS = 6


def _profile_interval(
    tau: Callable[[np.ndarray], np.ndarray],
    theta: float,
    half_width: float,
    bounds: tuple[float, float],
    t: float,
) -> tuple[list[float], list[bool]]:
    """Where the profile-t statistic ``tau(v)`` is at most ``t``, around the optimum ``theta``.

    ``tau(v) = sqrt((RSS_profile(v) - RSS_min) / s^2)`` (batched: an array of values
    in, an array out) is nearly linear in ``v`` on each side. Round 1 evaluates it at
    multiples of ``half_width`` (the Wald half-width) out to the bounds, until it
    brackets the first crossing of ``t`` on each side; later rounds evaluate
    :data:`_PROFILE_SUBDIVISIONS` points inside the brackets until ``tau`` changes
    little across them; the end is then interpolated linearly in ``tau``. The
    interval is the connected set of values around ``theta``.

    Returns:
        ``[lo, hi]`` and, per end, whether it is a bound of the search (``tau``
        never reached ``t``: the data set no limit there) rather than a crossing.
    """
    sides = ((-1.0, bounds[0]), (1.0, bounds[1]))
    brackets: list = [None, None]  # per side: (inner, tau_inner, outer, tau_outer); None: open
    last = [(theta, 0.0), (theta, 0.0)]  # per side: the farthest value below t so far
    for stage, offsets in enumerate(_PROFILE_OFFSETS):
        todo = {}
        for i, (sign, bound) in enumerate(sides):
            if brackets[i] is not None or last[i][0] == bound:
                continue
            v = theta + sign * half_width * offsets
            v = v[sign * (v - bound) < 0]
            todo[i] = np.append(v, bound) if stage == len(_PROFILE_OFFSETS) - 1 or len(v) < len(offsets) else v
        if not todo:
            break
        taus = tau(np.concatenate(list(todo.values())))
        start = 0
        for i, v in todo.items():
            tv = taus[start:start + len(v)]
            start += len(v)
            above = np.flatnonzero(tv > t)
            if len(above):
                k = above[0]
                inner, t_inner = (v[k - 1], tv[k - 1]) if k > 0 else last[i]
                brackets[i] = (inner, t_inner, v[k], tv[k])
            else:
                last[i] = (v[-1], tv[-1])
    for _ in range(_PROFILE_ROUNDS):
        live = [i for i, b in enumerate(brackets) if b is not None and b[3] - b[1] > _PROFILE_TAU_STEP * t]
        if not live:
            break
        inside = {i: np.linspace(brackets[i][0], brackets[i][2], _PROFILE_SUBDIVISIONS + 2)[1:-1] for i in live}
        taus = tau(np.concatenate(list(inside.values())))
        for j, i in enumerate(live):
            inner, t_inner, outer, t_outer = brackets[i]
            v = np.concatenate([[inner], inside[i], [outer]])
            tv = np.concatenate([[t_inner], taus[j * _PROFILE_SUBDIVISIONS:(j + 1) * _PROFILE_SUBDIVISIONS], [t_outer]])
            k = int(np.flatnonzero(tv > t)[0])
            brackets[i] = (v[k - 1], tv[k - 1], v[k], tv[k])
    ends, open_ = [], []
    for b, bound in zip(brackets, bounds):
        if b is None:
            ends.append(bound)
            open_.append(True)
        else:
            inner, t_inner, outer, t_outer = b
            ends.append(inner + (t - t_inner) * (outer - inner) / (t_outer - t_inner))
            open_.append(False)
    return ends, open_


def _saturating_intervals(
    prob: _Saturating, p: np.ndarray, rss: float, errs: np.ndarray, dof: int, ci_level: float
) -> tuple[dict, dict]:
    """Profile-likelihood intervals of L_inf, log10 X_c and alpha at ``ci_level``."""
    t = _t_quantile(ci_level, dof)
    s2 = rss / dof
    c_hat = prob.log10_c(p)
    if s2 <= 1e-300:  # noiseless data: every interval is a point
        return ({"L_inf": [p[0]] * 2, "log10_c": [c_hat] * 2, "alpha": [p[2]] * 2},
                {k: [False, False] for k in ("L_inf", "log10_c", "alpha")})
    pool = [p[None, :]]  # profile solutions so far: warm starts for log10 X_c

    def tau_of(solve):
        def tau(values):
            q, rss_profile = solve(values)
            pool.append(q)
            return np.sqrt(np.maximum(rss_profile - rss, 0.0) / s2)
        return tau

    def half_width(err: float, span: float) -> float:
        return t * err if math.isfinite(err) and err > 0 else 0.1 * span

    def at_c(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Start each from the two solutions so far whose log10 X_c are nearest, and from
        # the optimum; keep the best of the three (the profile can have several minima).
        known = np.concatenate(pool)
        with np.errstate(all="ignore"):
            known_c = prob.xbar + known[:, 1] / known[:, 2]
        order = np.argsort(np.abs(known_c[None, :] - c[:, None]), axis=1)[:, :2]
        starts = np.concatenate([known[order[:, 0]], known[order[:, -1]], np.repeat(p[None, :], len(c), 0)])
        q, r = prob.at_log10_c(np.tile(c, 3), starts)
        best = np.argmin(r.reshape(3, len(c)), axis=0) * len(c) + np.arange(len(c))
        return q[best], r[best]

    ci, open_ = {}, {}
    ci["L_inf"], open_["L_inf"] = _profile_interval(
        tau_of(prob.at_L_inf), p[0], half_width(errs[0], prob.L_inf_max), (0.0, prob.L_inf_max), t
    )
    ci["alpha"], open_["alpha"] = _profile_interval(
        tau_of(prob.at_alpha), p[2], half_width(errs[2], 1.0), (ALPHA_MIN, ALPHA_MAX), t
    )
    span = float(prob.x.max() - prob.x.min())
    bounds = (float(prob.x.min()) - LOG10_SCALE_SPAN, float(prob.x.max()) + LOG10_SCALE_SPAN)
    ci["log10_c"], open_["log10_c"] = _profile_interval(tau_of(at_c), c_hat, half_width(errs[1], span), bounds, t)
    return ci, open_


def _covariance_errors(prob: _Saturating, p: np.ndarray, rss: float, dof: int) -> np.ndarray:
    """Standard errors of (L_inf, log10 X_c, alpha) from the scaled covariance (as curve_fit)."""
    if dof < 1:
        return np.full(3, np.nan)
    alpha = p[2]
    c = prob.log10_c(p)
    _, J = prob.resid_jac(p)
    # Chain rule to (L_inf, c, alpha): b = alpha (c - xbar).
    J = np.column_stack([J[:, 0], alpha * J[:, 1], J[:, 2] + (c - prob.xbar) * J[:, 1]])
    _, s, Vt = np.linalg.svd(J, full_matrices=False)
    if not np.all(np.isfinite(s)) or s[-1] <= np.finfo(float).eps * max(J.shape) * s[0]:
        return np.full(3, np.inf)  # singular: parameters not constrained
    cov = (Vt.T / s**2) @ Vt * (rss / dof)
    return np.sqrt(np.diag(cov))


def _bound_reasons(L_inf: float, alpha: float, L_min: float) -> list[str]:
    """Why a saturating fit sits on a bound of its search (degenerate), if it does."""
    reasons = []
    if L_inf <= 1e-6 * L_min:
        reasons.append("L_inf is at its lower bound 0 (no saturation detected)")
    if alpha >= ALPHA_MAX * (1 - 1e-6):
        reasons.append(f"alpha is at its upper bound {ALPHA_MAX}")
    if alpha <= 1e-5:
        reasons.append("alpha is at its lower bound 0")
    return reasons


def _fit_saturating(X: np.ndarray, L: np.ndarray, variable: str, ci_level: float) -> dict:
    v = variable
    n = len(L)
    dof = n - 3
    nan = float("nan")
    out = {
        "model": model_string(v, "saturating"),
        "variable": v,
        "L_inf": nan, "L_inf_err": nan, "L_inf_ci": None,
        f"{v}_c": nan, f"{v}_c_err": nan, f"{v}_c_ci": None,
        f"log10_{v}_c": nan, f"log10_{v}_c_err": nan, f"log10_{v}_c_ci": None,
        "alpha": nan, "alpha_err": nan, "alpha_ci": None,
        "ci_level": ci_level,
        "ci_method": "profile likelihood (F-calibrated profile-t, Bates & Watts 1988)",
        "ci_open": None,
        "dof": max(dof, 0),
        "rss": nan,
        "fit_space": "log L",
        "degenerate": True,
        "reason": "",
    }
    if n < 3:
        out["reason"] = f"{n} points cannot constrain 3 parameters"
        return out

    prob = _Saturating(np.log10(X), L)
    best = prob.fit()
    if best is None:
        out["reason"] = "the fit failed at every starting exponent"
        return out
    p, rss = best
    L_inf, _, alpha = p
    log10_c = prob.log10_c(p)
    errs = _covariance_errors(prob, p, rss, dof)
    reasons = []
    if n <= 3:
        reasons.append(f"{n} points for 3 parameters: no degrees of freedom left for errors")
    elif not np.all(np.isfinite(errs)):
        reasons.append("covariance is infinite (parameters not constrained by the data)")
    reasons += _bound_reasons(L_inf, alpha, float(L.min()))

    X_c = 10.0**log10_c if abs(log10_c) < 300 else nan
    out.update({
        "L_inf": float(L_inf),
        "L_inf_err": float(errs[0]),
        f"{v}_c": X_c,
        f"{v}_c_err": float(X_c * LN10 * errs[1]),
        f"log10_{v}_c": float(log10_c),
        f"log10_{v}_c_err": float(errs[1]),
        "alpha": float(alpha),
        "alpha_err": float(errs[2]),
        "rss": float(rss),
        "degenerate": bool(reasons),
        "reason": "; ".join(reasons),
    })
    if not reasons:
        ci, open_ = _saturating_intervals(prob, p, rss, errs, dof, ci_level)
        out.update({
            "L_inf_ci": ci["L_inf"],
            f"log10_{v}_c_ci": ci["log10_c"],
            f"{v}_c_ci": _pow10(ci["log10_c"]),
            "alpha_ci": ci["alpha"],
            "ci_open": {"L_inf": open_["L_inf"], f"log10_{v}_c": open_["log10_c"], "alpha": open_["alpha"]},
        })
    return out


def fit_scaling_laws(
    X: Sequence[float], L: Sequence[float], variable: str = "N", ci_level: float = CI_LEVEL
) -> dict:
    """Fit ``L = L_inf + (X_c / X)^alpha`` and, beside it, ``L = (X_c / X)^alpha``.

    The saturating law is fitted on ``log L`` with bounds ``0 <= L_inf <= max(L)``
    and ``0 < alpha <= 5``, globally over alpha (see the module docstring); the
    power law by linear regression in log-log space.

    Args:
        X: Values of the variable, one per run (repeated values, e.g. seeds, are
            fine): parameter counts for ``variable="N"``, training FLOPs for ``"C"``.
        L: Final validation losses, one per run.
        variable: ``"N"`` (parameters) or ``"C"`` (compute); names the scale
            parameter (``N_c`` / ``C_c``) and the data.
        ci_level: Confidence level of the intervals.

    Returns:
        A JSON-serialisable dict (NaN written as ``None``), for ``variable="N"``::

            {"model": "L = L_inf + (N_c/N)^alpha", "variable": "N",
             "variable_name": "parameters", "n_points": int, "ci_level": 0.95,
             "saturating": {"model", "variable", "L_inf", "L_inf_err", "L_inf_ci",
                            "N_c", "N_c_err", "N_c_ci", "log10_N_c", "log10_N_c_err",
                            "log10_N_c_ci", "alpha", "alpha_err", "alpha_ci",
                            "ci_level", "ci_method", "ci_open", "dof", "rss",
                            "fit_space", "degenerate": bool, "reason": str},
             "power_law": {see fit_power_law},
             "data": {"N": [...], "L": [...]}}

        (``C_c``, ``log10_C_c``, ... and ``data["C"]`` for ``"C"``). Intervals are
        ``[lo, hi]``; ``ci_open`` says per parameter which ends are fit bounds.
        ``saturating.degenerate`` is True, with ``reason`` saying why and all
        intervals ``None``, when the uncertainties are not meaningful (too few
        points, infinite covariance, a parameter at its bound).

    Raises:
        ValueError: For fewer than 2 points, non-finite or non-positive values,
            fewer than 2 distinct X, mismatched lengths, an unknown variable or a
            level outside (0, 1).
    """
    X, L = _check_inputs(X, L, variable)
    _check_level(ci_level)
    result = {
        "model": model_string(variable, "saturating"),
        "variable": variable,
        "variable_name": VARIABLES[variable],
        "n_points": len(X),
        "ci_level": ci_level,
        "saturating": _fit_saturating(X, L, variable, ci_level),
        "power_law": fit_power_law(X, L, variable, ci_level),
        "data": {variable: X, "L": L},
    }
    return to_jsonable(result)


def predict(
    fit: Mapping[str, Any],
    X: Sequence[float] | float,
    law: Law = "saturating",
) -> np.ndarray:
    """Evaluate a fitted law at values ``X`` of its variable.

    Args:
        fit: A result of :func:`fit_scaling_laws` (possibly read back from JSON),
            or just its ``"saturating"`` / ``"power_law"`` entry.
        X: Values of the fit's variable (parameters or FLOPs).
        law: Which law to evaluate.

    Returns:
        Predicted losses, shape of ``X``; NaN where the fit has no value.

    Raises:
        ValueError: For an unknown ``law`` or a ``fit`` lacking its parameters.
    """
    if law not in ("saturating", "power_law"):
        raise ValueError(f"law must be 'saturating' or 'power_law', got {law!r}")
    params = fit.get(law, fit)
    variable = params.get("variable", fit.get("variable", "N"))
    expected = model_string(variable, law)
    if params.get("model", expected) != expected:
        raise ValueError(f"fit is a {params['model']!r} fit, not the {law!r} law {expected!r}")
    key = f"log10_{variable}_c"
    if key not in params or "alpha" not in params:
        raise ValueError(f"fit has no {law!r} parameters ({key}, alpha): keys {list(params)}")
    log10_X = np.log10(np.asarray(X, dtype=np.float64))
    alpha, log10_c = _as_float(params["alpha"]), _as_float(params[key])
    reducible = 10.0 ** (alpha * (log10_c - log10_X))
    if law == "power_law":
        return reducible
    return _as_float(params.get("L_inf")) + reducible


# --------------------------------------------------------------------------- fits over runs
#
# A sweep trains each size several times (train.seeds). Every run's loss enters the fits,
# not the sizes' means: the analytic intervals above then see the run-to-run scatter too.
# Beside them, a bootstrap over runs, resampled within each size (astropt.resample), gives
# percentile intervals, refitting each resample with the chosen estimator.

#: Point estimators of the laws: least squares in log L (as above) or Besiroglu et al.'s Huber.
ESTIMATORS = ("least_squares", "huber")
#: Starting exponents of the Huber fits: Besiroglu et al.'s grid, 0 to 2 in steps of 0.5.
HUBER_ALPHA_STARTS = (0.0, 0.5, 1.0, 1.5, 2.0)
#: Starting floors, ln E = ln(min L) + these (their grid spans 2 in ln E around the losses).
HUBER_FLOOR_STARTS = (-2.0, -1.5, -1.0, -0.5, -0.1)
#: Starting reducible losses at the data's centre, ln = ln(mean L) + these (2 % to 100 % of L).
HUBER_SCALE_STARTS = (-4.0, -3.0, -2.0, -1.0, 0.0)
#: Level of the F-test (saturating vs plain law) and of the lack-of-fit test.
TEST_LEVEL = 0.05
#: Points of the bootstrap band of each law across the data's range (and beyond: holdout).
BAND_POINTS = 60


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals, divided by ``delta`` (same minimiser), and its derivative."""
    a = np.abs(r)
    quad = a <= delta
    value = np.where(quad, 0.5 * r * r / delta, a - 0.5 * delta)
    return value, np.where(quad, r / delta, np.sign(r))


class _HuberFit:
    """Besiroglu et al.'s estimator: minimise the summed Huber loss of log-loss residuals.

    The saturating law is written ``ln L = LSE(b - alpha u, e)`` with ``u = ln X - mean ln X``
    (``E = e^e`` the floor, ``e^b`` the reducible loss at the data's centre); the plain law is
    ``ln L = b - alpha u``. L-BFGS-B (exponent bounded to [0, :data:`ALPHA_MAX`], as in the
    least-squares search) runs from every start of a grid and the best minimum is kept.
    """

    def __init__(self, X: np.ndarray, L: np.ndarray, law: Law):
        self.u_mean = float(np.mean(np.log(X)))
        self.u = np.log(X) - self.u_mean
        self.y = np.log(L)
        self.law = law
        self.L_min = float(np.min(L))
        lo_e = math.log(1e-8 * self.L_min)
        self.bounds = ([(0.0, ALPHA_MAX), (None, None), (lo_e, math.log(float(np.max(L))))]
                       if law == "saturating" else [(-ALPHA_MAX, ALPHA_MAX), (None, None)])

    def starts(self) -> list[np.ndarray]:
        b0 = [math.log(float(np.mean(np.exp(self.y)))) + s for s in HUBER_SCALE_STARTS]
        if self.law == "power_law":
            return [np.array([a, float(self.y.mean())]) for a in HUBER_ALPHA_STARTS]
        e0 = [math.log(self.L_min) + s for s in HUBER_FLOOR_STARTS]
        return [np.array([a, b, e]) for a in HUBER_ALPHA_STARTS for b in b0 for e in e0]

    def objective(self, p: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        if self.law == "power_law":
            pred = p[1] - p[0] * self.u
            value, d = _huber(pred - y, HUBER_DELTA)
            return float(value.sum()), np.array([-(d * self.u).sum(), d.sum()])
        a = p[1] - p[0] * self.u
        pred = np.logaddexp(a, p[2])
        s = np.exp(a - pred)  # share of the reducible term
        value, d = _huber(pred - y, HUBER_DELTA)
        return float(value.sum()), np.array([-(d * s * self.u).sum(), (d * s).sum(), (d * (1 - s)).sum()])

    def fit(self, y: np.ndarray | None = None, starts: Sequence[np.ndarray] | None = None
            ) -> tuple[np.ndarray | None, float]:
        """Best parameters from ``starts`` (default the grid) on log losses ``y`` (default the
        data) and their loss (None, NaN when every start failed)."""
        from scipy.optimize import minimize

        y = self.y if y is None else y
        results = []
        for p0 in (self.starts() if starts is None else starts):
            res = minimize(self.objective, p0, args=(y,), jac=True, method="L-BFGS-B", bounds=self.bounds,
                           options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-10})
            if np.isfinite(res.fun):
                results.append((float(res.fun), np.asarray(res.x)))
        if not results:
            return None, float("nan")
        loss, p = min(results, key=lambda r: r[0])
        return p, loss

    def params(self, p: np.ndarray | None) -> np.ndarray:
        """(alpha, log10 X_c, L_inf) of parameters ``p`` (NaN if None)."""
        if p is None:
            return np.full(3, np.nan)
        alpha = float(p[0])
        with np.errstate(all="ignore"):
            log10_c = (self.u_mean + p[1] / alpha) / LN10 if alpha != 0 else float("nan")
        return np.array([alpha, log10_c, math.exp(p[2]) if self.law == "saturating" else 0.0])


def _huber_entry(X: np.ndarray, L: np.ndarray, variable: str, law: Law, ci_level: float) -> tuple[dict, list]:
    """A law fitted by the Huber estimator, in the layout of :func:`fit_power_law` (no
    analytic errors: its intervals come from the bootstrap), and the starts of its bootstrap
    refits: the optimum itself. (Besiroglu et al. restart every refit from the whole grid; a
    warm start converges in about 10 L-BFGS steps instead of about 300, which keeps 1,000
    refits to seconds.)"""
    h = _HuberFit(X, L, law)
    p, loss = h.fit()
    alpha, log10_c, L_inf = h.params(p)
    v, nan = variable, float("nan")
    reasons = []
    if p is None:
        reasons.append("the Huber fit failed from every start")
    elif law == "saturating":
        reasons += _bound_reasons(L_inf, alpha, h.L_min)
    entry = {
        "model": model_string(v, law), "variable": v,
        "alpha": alpha, "alpha_err": nan, "alpha_ci": None,
        f"log10_{v}_c": log10_c, f"log10_{v}_c_err": nan, f"log10_{v}_c_ci": None,
        f"{v}_c": 10.0**log10_c if abs(log10_c) < 300 else nan, f"{v}_c_ci": None,
        "ci_level": ci_level, "ci_method": "bootstrap only (Huber estimator: no analytic errors)",
        "ci_open": None, "dof": len(L) - (3 if law == "saturating" else 2),
        "fit_space": "log L", "estimator": "huber", "huber_delta": HUBER_DELTA,
        "huber_loss": loss * HUBER_DELTA, "huber_starts": len(h.starts()),
        "degenerate": bool(reasons), "reason": "; ".join(reasons),
    }
    if law == "saturating":
        entry.update({"L_inf": L_inf, "L_inf_err": nan, "L_inf_ci": None})
    return entry, ([] if p is None else [p])


def _power_law_batch(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Least-squares power laws of many resamples at once: log L (natural, rows of ``Y``)
    against ``x = log10 X``. Returns (B, 3): alpha, log10 X_c, 0 (no floor)."""
    xc = x - x.mean()
    Z = Y / LN10
    slope = (Z - Z.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)
    intercept = Z.mean(axis=1) - slope * x.mean()
    alpha = -slope
    with np.errstate(all="ignore"):
        log10_c = np.where(alpha != 0, intercept / alpha, np.nan)
    return np.column_stack([alpha, log10_c, np.zeros(len(alpha))])


def _refit(X: np.ndarray, L: np.ndarray, Y: np.ndarray, law: Law, estimator: str, starts: list) -> np.ndarray:
    """Parameters (alpha, log10 X_c, L_inf) of each resample ``Y`` (B, n) of the log losses of
    the data ``(X, L)``."""
    x = np.log10(X)
    if law == "power_law" and estimator == "least_squares":
        return _power_law_batch(x, Y)
    out = np.full((len(Y), 3), np.nan)
    if estimator == "least_squares":
        for b, y in enumerate(Y):
            prob = _Saturating(x, np.exp(y))
            best = prob.fit()
            if best is not None:
                p = best[0]
                out[b] = (p[2], prob.log10_c(p), p[0])
        return out
    h = _HuberFit(X, L, law)  # the data's abscissae and bounds; each resample's y is passed to fit
    for b, y in enumerate(Y):
        p, _ = h.fit(y, starts)
        out[b] = h.params(p)
    return out


def _law_values(P: np.ndarray, X: np.ndarray, law: Law) -> np.ndarray:
    """Losses of the laws with parameters ``P`` (B, 3: alpha, log10 X_c, L_inf) at ``X``: (B, len(X))."""
    alpha, c, L_inf = P[:, :1], P[:, 1:2], P[:, 2:3]
    with np.errstate(all="ignore"):
        reducible = 10.0 ** (alpha * (c - np.log10(X)[None, :]))
    return reducible + (L_inf if law == "saturating" else 0.0)


def _param_vector(entry: Mapping, variable: str, law: Law) -> np.ndarray:
    return np.array([_as_float(entry.get("alpha")), _as_float(entry.get(f"log10_{variable}_c")),
                     _as_float(entry.get("L_inf")) if law == "saturating" else 0.0])


class _Bootstrap:
    """The bootstrap over runs of one data set: resampled log losses and each law's refits."""

    def __init__(self, X, L, codes, n_boot: int, seed: int, estimator: str, starts: Mapping[str, list],
                 laws: Sequence[str] = ("power_law", "saturating")):
        from astropt.resample import group_variances, resample_within_groups

        self.X, self.L, self.codes = X, L, codes
        self.rng = np.random.default_rng(seed)
        self.logL = np.log(L)
        self.Y, self.means = resample_within_groups(self.logL, codes, n_boot, self.rng)
        self.var, self.counts = group_variances(self.logL, codes)
        self.P = {law: _refit(X, L, self.Y, law, estimator, starts.get(law, [])) for law in laws}

    def factor(self, replicates: np.ndarray, ci_level: float, noise_runs: float | None = None) -> tuple[float, float]:
        """The t-calibration factor of a statistic's replicates and its Satterthwaite df
        (:func:`astropt.resample.t_factor`)."""
        from astropt.resample import t_factor

        return t_factor(replicates, self.means, self.var, self.counts, ci_level, noise_runs)

    def noise(self, m: int) -> np.ndarray:
        """Per resample, the mean of ``m`` draws from the pooled within-size deviations of log L."""
        from astropt.resample import pooled_noise

        return pooled_noise(self.logL, self.codes, m, len(self.Y), self.rng)


def _boot_intervals(boot: _Bootstrap, entry: dict, variable: str, law: Law, ci_level: float) -> dict:
    """Bootstrap percentile intervals (t-calibrated) of a law's parameters."""
    from astropt.resample import calibrated_interval

    P = boot.P[law]
    ok = np.isfinite(P).all(axis=1)
    point = _param_vector(entry, variable, law)
    x = np.log10(boot.X)
    span = (float(x.min()) - LOG10_SCALE_SPAN, float(x.max()) + LOG10_SCALE_SPAN)
    bounds = {"alpha": (ALPHA_MIN, ALPHA_MAX) if law == "saturating" else (-math.inf, math.inf),
              f"log10_{variable}_c": span, "L_inf": (0.0, float(boot.L.max()))}
    out, open_, dfs = {}, {}, {}
    keys = ["alpha", f"log10_{variable}_c"] + (["L_inf"] if law == "saturating" else [])
    for i, key in enumerate(keys):
        f, nu = boot.factor(P[:, i], ci_level) if ok.sum() > 2 else (1.0, math.inf)  # NaN rows: failed refits
        ci, opened = calibrated_interval(point[i], P[ok, i], ci_level, f, bounds[key])
        out[f"{key}_boot_ci"], open_[key], dfs[key] = ci, opened, nu
    out["boot_open"] = open_
    out["boot_dof"] = dfs
    out["boot_failed"] = int((~ok).sum())
    out[f"{variable}_c_boot_ci"] = _pow10(out[f"log10_{variable}_c_boot_ci"])
    return out


def compare_laws(logL: np.ndarray, codes: np.ndarray, pred: Mapping[str, np.ndarray]) -> dict:
    """Which law the runs support: an F-test of the saturating law against the plain one
    (nested: ``L_inf = 0``), their AIC, and a lack-of-fit test of each against the runs'
    own scatter.

    Args:
        logL: Natural log of every run's loss.
        codes: Size (group) of each run.
        pred: Law -> least-squares predictions of L at each run.

    Returns:
        ``{"rss", "aic", "f_stat", "f_p", "preferred", "why", "lack_of_fit"}`` (RSS in
        (ln L)^2). The F-test is conservative here: the null ``L_inf = 0`` lies on the
        boundary of ``L_inf >= 0``. The lack-of-fit test compares the scatter of the size
        means around a law with the runs' scatter around their size's mean (needs
        replicate runs and more sizes than parameters).
    """
    n, k = len(logL), int(codes.max()) + 1
    rss = {law: float(np.sum((logL - np.log(p)) ** 2)) for law, p in pred.items() if np.isfinite(p).all()}
    aic = {law: n * math.log(max(r, 1e-300) / n) + 2 * (3 if law == "saturating" else 2) for law, r in rss.items()}
    out: dict[str, Any] = {"rss": rss, "aic": aic, "f_stat": None, "f_p": None, "test_level": TEST_LEVEL}
    if "saturating" in rss and "power_law" in rss and n > 3 and rss["saturating"] > 0:
        f = max(rss["power_law"] - rss["saturating"], 0.0) / (rss["saturating"] / (n - 3))
        out["f_stat"], out["f_p"] = f, float(stats.f.sf(f, 1, n - 3))
    ss_pe = float(sum(np.sum((logL[codes == g] - logL[codes == g].mean()) ** 2) for g in range(k)))
    df_pe = n - k
    lof = {}
    for law, r in rss.items():
        p = 3 if law == "saturating" else 2
        df_lof = k - p
        if df_pe < 1 or df_lof < 1 or ss_pe <= 0:
            why = ("no replicate runs: the runs' own scatter is unknown" if df_pe < 1 else
                   f"{k} sizes for {p} parameters: nothing left to test" if df_lof < 1 else "the runs agree exactly")
            lof[law] = {"f_stat": None, "p": None, "df": [max(df_lof, 0), df_pe], "reason": why}
            continue
        f = (max(r - ss_pe, 0.0) / df_lof) / (ss_pe / df_pe)
        lof[law] = {"f_stat": f, "p": float(stats.f.sf(f, df_lof, df_pe)), "df": [df_lof, df_pe], "reason": ""}
    out["lack_of_fit"] = lof
    return out


def _preferred(comparison: Mapping, saturating: Mapping) -> tuple[Law, str]:
    p = comparison.get("f_p")
    if p is None:
        return "power_law", "too few runs to test the saturating law against the plain one"
    if saturating.get("degenerate"):
        return "power_law", f"the saturating fit is degenerate ({saturating.get('reason')})"
    if p < TEST_LEVEL:
        return "saturating", f"the floor L_inf is needed (F-test p = {p:.2g} < {TEST_LEVEL})"
    return "power_law", f"the floor L_inf does not improve the fit enough (F-test p = {p:.2g} >= {TEST_LEVEL})"


def fit_runs(
    X: Sequence[float],
    L: Sequence[float],
    groups: Sequence,
    variable: str = "N",
    *,
    estimator: str = "least_squares",
    n_boot: int = N_BOOT,
    ci_level: float = CI_LEVEL,
    seed: int = 0,
    boot_laws: Sequence[str] | str = ("power_law", "saturating"),
) -> dict:
    """Fit both laws to every run's loss, with analytic and bootstrap intervals.

    Args:
        X: The variable of each run (parameters or FLOPs); runs of one size share it.
        L: Each run's final validation loss.
        groups: Each run's size (the bootstrap resamples runs within each).
        variable: ``"N"`` or ``"C"``.
        estimator: ``"least_squares"`` (the fits of :func:`fit_scaling_laws`) or ``"huber"``
            (Besiroglu et al.: summed Huber loss, delta :data:`HUBER_DELTA`, on log
            residuals, L-BFGS-B from a grid of starts; no analytic intervals).
        n_boot: Bootstrap resamples (0: none).
        ci_level: Level of every interval.
        seed: Seed of the resamples.
        boot_laws: The laws the bootstrap refits (each refit of the saturating law is a
            global fit: about 3 ms by least squares, 5 ms by Huber), or ``"preferred"``.

    Returns:
        :func:`fit_scaling_laws`'s result with, per law, ``{key}_boot_ci``, ``boot_open``,
        ``boot_dof`` (Satterthwaite df behind the calibration) and ``boot_failed``; and
        ``"n_sizes"``, ``"runs_per_size"``, ``"estimator"``, ``"bootstrap"`` (resamples,
        method, or why there is none), ``"comparison"`` (:func:`compare_laws`),
        ``"preferred"`` / ``"preferred_why"`` and ``"band"`` (``{X, power_law: {lo, hi},
        saturating: {lo, hi}}``); ``data`` also lists each run's ``group``.

    Raises:
        ValueError: As :func:`fit_scaling_laws`, or for an unknown estimator or mismatched groups.
    """
    return _fit_runs(X, L, groups, variable, estimator, n_boot, ci_level, seed, None, boot_laws)[0]


def _fit_runs(X, L, groups, variable, estimator, n_boot, ci_level, seed, band, boot_laws
              ) -> tuple[dict, _Bootstrap | None]:
    """:func:`fit_runs`, and its bootstrap (None without one) for predictions from it."""
    from astropt.resample import group_codes

    if estimator not in ESTIMATORS:
        raise ValueError(f"config key 'scaling.estimator': {estimator!r} is not one of {', '.join(ESTIMATORS)}")
    X_arr, L_arr = _check_inputs(X, L, variable)
    groups = [str(g) for g in groups]
    if len(groups) != len(X_arr):
        raise ValueError(f"{len(groups)} group labels for {len(X_arr)} runs")
    codes, labels = group_codes(groups)
    result = fit_scaling_laws(X_arr, L_arr, variable, ci_level)
    least_squares = {law: result[law] for law in ("saturating", "power_law")}
    starts: dict[str, list] = {}
    if estimator == "huber":
        for law in ("saturating", "power_law"):
            result[law], starts[law] = _huber_entry(X_arr, L_arr, variable, law, ci_level)
        result["least_squares"] = least_squares
    counts = np.bincount(codes)
    result.update({
        "n_sizes": len(labels),
        "runs_per_size": {g: int(c) for g, c in zip(labels, counts)},
        "estimator": estimator,
        "data": {**result["data"], "group": groups},
    })
    pred = {law: predict(least_squares, X_arr, law) for law in ("saturating", "power_law")}
    result["comparison"] = compare_laws(np.log(L_arr), codes, pred)
    result["preferred"], result["preferred_why"] = _preferred(result["comparison"], least_squares["saturating"])
    single = [g for g, c in zip(labels, counts) if c < 2]
    info = {"n_resamples": int(n_boot), "seed": seed, "ci_level": ci_level, "available": False,
            "method": "runs resampled with replacement within each size, each refitted; percentile intervals "
                      "with inflated deviations and t-calibrated ends (astropt.resample)",
            "reason": "", "single_run_sizes": single}
    boot = None
    if n_boot < 1:
        info["reason"] = "scaling.n_boot is 0"
    elif len(single) == len(labels):
        info["reason"] = ("one run per size: a bootstrap over runs cannot see the run-to-run variance "
                          "(add seeds: train.seeds)")
    else:
        laws = [result["preferred"]] if boot_laws == "preferred" else list(boot_laws)
        boot = _Bootstrap(X_arr, L_arr, codes, n_boot, seed, estimator, starts, laws)
        info["available"] = True
        info["laws"] = laws
        if single:
            info["reason"] = (f"sizes {', '.join(single)} have one run: their run-to-run variance is not seen, "
                              "so the intervals are too narrow")
        for law in laws:
            result[law].update(_boot_intervals(boot, result[law], variable, law, ci_level))
    result["bootstrap"] = info
    grid = np.asarray(band, dtype=np.float64) if band is not None else np.logspace(
        math.log10(X_arr.min()) - 0.05, math.log10(X_arr.max()) + 0.05, BAND_POINTS)
    result["band"] = _band(boot, result, variable, grid, ci_level) if boot is not None else None
    return to_jsonable(result), boot


def _band(boot: _Bootstrap, result: Mapping, variable: str, grid: np.ndarray, ci_level: float) -> dict:
    """Pointwise bootstrap intervals of each law's loss at ``grid``."""
    from astropt.resample import calibrated_interval

    band: dict[str, Any] = {variable: grid}
    for law in ("power_law", "saturating"):
        if law not in boot.P:
            band[law] = None
            continue
        P = boot.P[law]
        ok = np.isfinite(P).all(axis=1)
        point = _law_values(_param_vector(result[law], variable, law)[None, :], grid, law)[0]
        if ok.sum() < 3 or not np.isfinite(point).all():
            band[law] = None
            continue
        curves = np.full((len(P), len(grid)), np.nan)  # a row per resample, NaN where it failed
        curves[ok] = np.log(_law_values(P[ok], grid, law))
        lo, hi = np.empty(len(grid)), np.empty(len(grid))
        for j in range(len(grid)):
            f, _ = boot.factor(curves[:, j], ci_level)
            ci, _ = calibrated_interval(math.log(point[j]), curves[ok, j], ci_level, f)
            lo[j], hi[j] = (math.exp(ci[0]), math.exp(ci[1])) if ci else (np.nan, np.nan)
        band[law] = {"lo": lo, "hi": hi}
    return band


def holdout_test(
    X: Sequence[float],
    L: Sequence[float],
    groups: Sequence,
    holdout: str,
    variable: str = "N",
    *,
    estimator: str = "least_squares",
    n_boot: int = N_BOOT,
    ci_level: float = CI_LEVEL,
    seed: int = 0,
) -> dict:
    """Fit without one size, predict its loss, and compare with its runs.

    The law the fitting runs prefer (:func:`compare_laws`) predicts the held-out size's loss.
    Two intervals at ``ci_level``: ``pi_run`` for one new run, ``pi_mean`` for the mean of as
    many runs as were held out. Each replicate is a bootstrap refit's prediction plus the mean
    of that many draws of the run-to-run noise (pooled within-size deviations), t-calibrated
    like the fits' intervals (:mod:`astropt.resample`). With one run per fitting size there is
    no bootstrap: a Student-t prediction interval of the least-squares power law is given
    instead (it sees the scatter around the law only).

    Returns:
        ``{"size", variable, "n_runs", "observed", "observed_mean", "law", "predicted",
        "pi_run", "pi_mean", "method", "inside_mean", "runs_inside", "verdict", "fit"}``
        (``fit``: :func:`fit_runs` on the other sizes, without its band), or
        ``{"size", "reason"}`` when no test is possible.
    """
    X_arr = np.asarray(X, dtype=np.float64)
    L_arr = np.asarray(L, dtype=np.float64)
    groups = np.asarray([str(g) for g in groups])
    held = groups == str(holdout)
    if not held.any():
        return {"size": holdout, "reason": f"no runs of size {holdout!r} to hold out"}
    rest = ~held
    if len(np.unique(X_arr[rest])) < 2 or rest.sum() < 3:
        return {"size": holdout, "reason": f"holding out {holdout} leaves {len(np.unique(groups[rest]))} size(s): "
                                           "a law needs at least 2 sizes and 3 runs"}
    Xh = float(X_arr[held][0])
    observed = L_arr[held]
    m = len(observed)
    fit, boot = _fit_runs(X_arr[rest], L_arr[rest], groups[rest], variable, estimator, n_boot, ci_level, seed,
                          np.array([Xh]), "preferred")
    law = fit["preferred"]
    predicted = float(predict(fit, Xh, law))
    out: dict[str, Any] = {"size": str(holdout), variable: Xh, "n_runs": m, "observed": observed,
                           "observed_mean": float(np.exp(np.mean(np.log(observed)))), "law": law,
                           "predicted": predicted, "ci_level": ci_level}
    if boot is not None:
        from astropt.resample import calibrated_interval

        P = boot.P[law]
        base = np.log(_law_values(P, np.array([Xh]), law)[:, 0])
        for key, runs in (("pi_run", 1), ("pi_mean", m)):
            rep = base + boot.noise(runs)
            f, nu = boot.factor(rep, ci_level, noise_runs=runs)
            ci, _ = calibrated_interval(math.log(predicted), rep, ci_level, f)
            out[key] = [math.exp(v) for v in ci] if ci else None
            out[f"{key}_dof"] = nu
        out["method"] = (f"bootstrap over the other sizes' runs ({n_boot} resamples), refit plus run-to-run noise; "
                         "t-calibrated percentile interval")
    else:
        out.update(_t_prediction(X_arr[rest], L_arr[rest], Xh, m, ci_level))
        law = out["law"] = "power_law"
        out["predicted"] = predicted = float(predict(fit, Xh, "power_law"))
    pi_mean, pi_run = out.get("pi_mean"), out.get("pi_run")
    out["inside_mean"] = bool(pi_mean and pi_mean[0] <= out["observed_mean"] <= pi_mean[1]) if pi_mean else None
    out["runs_inside"] = int(sum(pi_run[0] <= v <= pi_run[1] for v in observed)) if pi_run else None
    out["verdict"] = _holdout_verdict(out, fit)
    fit.pop("band", None)
    out["fit"] = fit
    return to_jsonable(out)


def _t_prediction(X: np.ndarray, L: np.ndarray, Xh: float, m: int, ci_level: float) -> dict:
    """Student-t prediction intervals of a least-squares power law (log space) at ``Xh``."""
    x, y = np.log10(X), np.log(L)
    n = len(x)
    res = stats.linregress(x, y)
    s2 = float(np.sum((y - res.intercept - res.slope * x) ** 2)) / (n - 2) if n > 2 else float("nan")
    t = _t_quantile(ci_level, n - 2)
    xc = math.log10(Xh) - x.mean()
    lever = 1 / n + xc * xc / float(np.sum((x - x.mean()) ** 2))
    centre = res.intercept + res.slope * math.log10(Xh)
    out = {"method": "Student-t prediction interval of the least-squares power law (one run per size: "
                     "no bootstrap over runs; it sees only the scatter around the law)"}
    for key, runs in (("pi_run", 1), ("pi_mean", m)):
        half = t * math.sqrt(s2 * (1 / runs + lever)) if np.isfinite(s2) else float("nan")
        out[key] = [math.exp(centre - half), math.exp(centre + half)] if np.isfinite(half) else None
    return out


def _holdout_verdict(h: Mapping, fit: Mapping) -> str:
    """The held-out comparison in one sentence, a miss stated plainly."""
    sizes = ", ".join(dict.fromkeys(fit["data"]["group"]))
    if not h.get("pi_mean"):
        return f"no prediction interval for {h['size']} (the fit on {sizes} has no uncertainty estimate)"
    law = "power law" if h["law"] == "power_law" else "saturating law"
    head = (f"the {law} fitted on {sizes} predicts {h['predicted']:.4g} for {h['size']}; "
            f"its {runs_text(h['n_runs'])} averaged {h['observed_mean']:.4g}")
    return interval_verdict(head, h["observed_mean"], h["pi_mean"], h["predicted"], h["ci_level"], h["n_runs"],
                            "a higher loss than the law predicts: the gain from size falls off",
                            "a lower loss than the law predicts: the gain from size is larger than extrapolated")


def headline(entry: Mapping) -> dict:
    """Whether a fit's law can be quoted in a summary's headline, and why (not).

    A law is quoted when the runs support it (:func:`compare_laws`: the preferred law, not
    rejected by the lack-of-fit test) and its intervals are bounded: the bootstrap over runs
    when there is one, else the analytic interval (then flagged: one run per size).

    Returns:
        ``{"law", "quote": bool, "interval": "bootstrap" | "analytic" | None, "alpha",
        "alpha_ci", "L_inf", "L_inf_ci", "excludes_zero", "notes": [str]}``.
    """
    law = entry.get("preferred", "power_law")
    p = entry.get(law) or {}
    notes = [entry.get("preferred_why", "")] if entry.get("preferred_why") else []
    bs = entry.get("bootstrap") or {}
    boot = bs.get("available", False)
    key = "_boot_ci" if boot else "_ci"
    alpha_ci = p.get(f"alpha{key}")
    opened = (p.get("boot_open") if boot else p.get("ci_open")) or {}
    bounded = alpha_ci is not None and not any(opened.get("alpha", [False, False]))
    if law == "saturating":
        L_ci = p.get(f"L_inf{key}")
        bounded = bounded and L_ci is not None and not any(opened.get("L_inf", [False, False]))
    lof = (entry.get("comparison") or {}).get("lack_of_fit", {}).get(law, {})
    rejected = lof.get("p") is not None and lof["p"] < TEST_LEVEL
    if rejected:
        notes.append(f"the {'saturating' if law == 'saturating' else 'power'} law does not describe the size means "
                     f"within the runs' scatter (lack-of-fit p = {lof['p']:.2g})")
    if not bounded:
        notes.append("its interval of alpha" + (" or L_inf" if law == "saturating" else "")
                     + " is not bounded by the data")
    if not boot or bs.get("reason"):
        notes.append(bs.get("reason") or "no bootstrap over runs")
    return {
        "law": law, "quote": bool(bounded and not rejected), "interval": ("bootstrap" if boot else "analytic") if alpha_ci else None,
        "alpha": p.get("alpha"), "alpha_ci": alpha_ci, "L_inf": p.get("L_inf"),
        "L_inf_ci": p.get(f"L_inf{key}") if law == "saturating" else None,
        "excludes_zero": bool(alpha_ci and (alpha_ci[0] > 0 or alpha_ci[1] < 0)),
        "notes": [n for n in notes if n],
    }


def fit_study(
    runs: pd.DataFrame,
    *,
    estimator: str = "least_squares",
    n_boot: int = N_BOOT,
    holdout: str | None = None,
    seed: int = 0,
    ci_level: float = CI_LEVEL,
    log: Callable[..., Any] = lambda *a: None,
) -> dict:
    """The scaling rule's ``fit.json``: every run's final loss against parameters and compute.

    Args:
        runs: One row per run: ``size``, ``seed``, ``params``, ``flops``, ``tokens_seen``,
            ``val_loss`` (:func:`astropt.runs.load_sidecars`).
        estimator, n_boot, seed, ci_level: As :func:`fit_runs`.
        holdout: The size to hold out and predict (:func:`holdout_test`), or None.
        log: Progress lines.

    Returns:
        ``{"sizes", "seeds", "n_points", "n_sizes", "runs_per_size", "ci_level", "estimator",
        "n_boot", "params": fit_runs(N), "compute": fit_runs(C), "holdout": holdout_test}``.
        With fewer than two sizes ``params`` / ``compute`` are ``{"error", ...}``. When every
        run saw the same tokens, compute is parameters in other units: ``compute`` then says so
        (``separate_evidence`` False, ``note``) and is only fitted by least squares, with no
        bootstrap of its own (the compute panel of the figure draws it).
    """
    runs = runs.sort_values(["params", "seed"], kind="stable", ignore_index=True)
    sizes = list(dict.fromkeys(runs["size"].astype(str)))
    groups = runs["size"].astype(str).to_numpy()
    out: dict[str, Any] = {
        "sizes": sizes, "seeds": sorted({int(s) for s in runs["seed"]}), "n_points": len(runs),
        "n_sizes": len(sizes), "runs_per_size": {s: int((groups == s).sum()) for s in sizes},
        "ci_level": ci_level, "estimator": estimator, "n_boot": n_boot,
    }
    same_tokens = runs["tokens_seen"].nunique() == 1
    for key, column, variable in (("params", "params", "N"), ("compute", "flops", "C")):
        X, L = runs[column].to_numpy(float), runs["val_loss"].to_numpy(float)
        if len(sizes) < 2:
            out[key] = {"variable": variable, "variable_name": VARIABLES[variable], "n_points": len(runs),
                        "ci_level": ci_level, "data": {variable: X, "L": L, "group": groups},
                        "error": f"a scaling fit needs at least two sizes, got {len(sizes)} ({', '.join(sizes)})"}
            continue
        restates = key == "compute" and same_tokens
        log(f"fitting loss vs {VARIABLES[variable]} over {len(runs)} runs of {len(sizes)} sizes"
            + ("" if restates else f" ({estimator}, {n_boot} bootstrap resamples)"))
        out[key] = fit_runs(X, L, groups, variable, estimator="least_squares" if restates else estimator,
                            n_boot=0 if restates else n_boot, ci_level=ci_level, seed=seed)
        if key == "compute":
            out[key]["separate_evidence"] = not restates
            if restates:
                tokens = float(runs["tokens_seen"].iloc[0])
                out[key]["note"] = (f"every run saw the same {tokens:.3g} tokens: C is N in other units, so this fit "
                                    "restates the parameter fit (not separate evidence)")
    if holdout is None:
        out["holdout"] = {"size": None, "reason": "scaling.holdout is null: no size held out"}
    elif len(sizes) < 2:
        out["holdout"] = {"size": holdout, "reason": "one size: nothing to hold out"}
    else:
        log(f"holding out {holdout}: fitting the other sizes and predicting it")
        out["holdout"] = holdout_test(runs["params"].to_numpy(float), runs["val_loss"].to_numpy(float), groups,
                                      holdout, "N", estimator=estimator, n_boot=n_boot, ci_level=ci_level, seed=seed)
    return to_jsonable(out)


# --------------------------------------------------------------------------- the scaling stage


def write_fits(sidecars, out_fit, out_table, out_md, out_tex, out_csv=None, scaling_cfg: dict | None = None,
            holdout: str | None = None, seed: int = 0, log=print) -> dict:
    """Fit every run's final validation loss against parameters N and training compute C
    (:func:`fit_study`: both laws, analytic and bootstrap intervals, the held-out
    size). Writes ``losses.csv`` (one row per run, :func:`astropt.runs.load_sidecars`), ``fit.json`` and the
    fit table as markdown, LaTeX and CSV cells (``out_csv``: the report's caption shows it).

    ``scaling_cfg`` is the config's ``scaling`` section (estimator, n_boot); ``holdout`` the size
    to hold out (resolved from ``scaling.holdout``); ``seed`` seeds the bootstrap.
    """
    cfg = {"estimator": "least_squares", "n_boot": N_BOOT, **(scaling_cfg or {})}
    table = load_sidecars(sidecars)
    atomic_write(out_table, lambda tmp: table.to_csv(tmp, index=False))
    for row in table.itertuples():
        log(f"  {row.size:>6} {row.budget:>7} seed {row.seed}: {row.params:>12,} parameters, {row.flops:.3g} training FLOPs, "
            f"final val loss {row.val_loss:.5f}")
    bad = table[~(table["flops"] > 0)]
    if len(bad):
        raise ValueError(f"runs {(bad['size'] + '/' + bad['budget'] + '/seed' + bad['seed'].astype(str)).tolist()} "
                         f"have no positive 'flops' in their ckpt.json: retrain them to record the training compute")
    main = table[table["default_budget"]].reset_index(drop=True)
    fit = fit_study(main, estimator=cfg["estimator"], n_boot=cfg["n_boot"], holdout=holdout, seed=seed, log=log)
    if table["budget"].nunique() > 1 or not table["default_budget"].all():
        fit["grid"] = grid_study(table, n_boot=cfg["n_boot"], seed=seed, log=log)
    fit["cost"] = compute_table(table)  # "compute" holds the fit over C
    atomic_write(out_fit, lambda tmp: tmp.write_text(json.dumps(fit, indent=2) + "\n"))
    fits = fit_table(fit)
    md, tex = table_markdown(fits), table_latex(fits)
    if "grid" in fit:
        md, tex = f"{md}\n{grid_markdown(fit['grid'])}", f"{tex}\n{grid_latex(fit['grid'])}"
    md = f"{md}\n{compute_markdown(fit['cost'])}"
    atomic_write(out_md, lambda tmp: tmp.write_text(md))
    atomic_write(out_tex, lambda tmp: tmp.write_text(tex))
    if out_csv is not None:
        header, rows, notes = table_cells(fits)
        # The note column spelled out: the report shows this table without the notes below it.
        spelled = [[*r[:-1], notes[int(r[-1].strip("()")) - 1] if r[-1] else ""] for r in rows]
        atomic_write(out_csv, lambda tmp: pd.DataFrame(spelled, columns=header).to_csv(tmp, index=False))
    if fit["n_sizes"] < 2:
        log(f"only one size ({', '.join(fit['sizes'])}): no fit; {out_fit} and the tables say so")
    log(md)
    h = fit["holdout"]
    log(f"held-out size: {h.get('verdict') or h.get('reason')}")
    log(f"wrote {out_fit}, {out_md} and {out_tex}")
    return fit
