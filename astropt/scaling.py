"""Scaling-law fits of final validation loss against parameter count.

Two laws are fitted, side by side:

- the saturating power law of Henighan et al. (2020), used by the AstroPT paper,
  ``L(N) = L_inf + (N_c / N)^alpha``, by bounded non-linear least squares on
  ``log L`` (losses carry multiplicative noise) from several starting points;
- the plain power law ``L(N) = (N_c / N)^alpha``, a straight line in log-log
  space fitted by linear regression: always well defined for two or more
  points, and the fallback when the saturating fit is degenerate.

With few sizes the saturating fit is often degenerate: ``L_inf`` collapses onto
the best model's loss or onto 0, or there are no spare degrees of freedom. The
result then says so (``"degenerate": True`` and a ``reason``) instead of quoting
meaningless uncertainties.

Example::

    fit = fit_saturating_power_law(table["params"], table["val_loss"])
    json.dump(fit, open("fit.json", "w"), indent=2)
    curve = predict(fit, np.logspace(5, 9))
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from scipy import optimize, stats

MODEL = "L = L_inf + (N_c/N)^alpha"
POWER_LAW_MODEL = "L = (N_c/N)^alpha"

#: Upper bound of the exponent in the saturating fit.
ALPHA_MAX = 5.0
#: Starting values of L_inf, as fractions of the smallest observed loss.
L_INF_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)


def to_jsonable(obj: Any) -> Any:
    """Convert a nested structure to plain JSON types.

    NumPy scalars and arrays become Python numbers and lists; NaN and infinities
    become ``None``; tuples become lists; mapping keys become strings.

    Args:
        obj: Any nesting of dicts, lists, tuples, NumPy values and scalars.

    Returns:
        The same structure, accepted by ``json.dumps``.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def _as_float(value: Any) -> float:
    """A fit value that may be None (from JSON) as a float, None -> NaN."""
    return float("nan") if value is None else float(value)


def _check_inputs(N: Sequence[float], L: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    N = np.asarray(N, dtype=np.float64).ravel()
    L = np.asarray(L, dtype=np.float64).ravel()
    if len(N) != len(L):
        raise ValueError(f"N and L differ in length: {len(N)} parameter counts, {len(L)} losses")
    if len(N) < 2:
        raise ValueError(f"a scaling fit needs at least 2 (N, L) points, got {len(N)}")
    for name, values in (("N (parameter counts)", N), ("L (losses)", L)):
        bad = ~np.isfinite(values) | (values <= 0)
        if bad.any():
            raise ValueError(
                f"{name} must be finite and positive; bad values at positions "
                f"{np.flatnonzero(bad).tolist()}: {values[bad].tolist()}"
            )
    if np.unique(N).size < 2:
        raise ValueError(f"N needs at least 2 distinct parameter counts, got {np.unique(N)}")
    return N, L


def _saturating_log(
    log10_N: np.ndarray, L_inf: float, log10_N_c: float, alpha: float
) -> np.ndarray:
    # log L for L = L_inf + 10^(alpha (log10 N_c - log10 N)); parameters are O(1).
    return np.log(L_inf + 10.0 ** (alpha * (log10_N_c - log10_N)))


def fit_power_law(N: Sequence[float], L: Sequence[float]) -> dict:
    """Fit ``L = (N_c / N)^alpha`` by linear regression of log10 L on log10 N.

    Args:
        N: Parameter counts.
        L: Losses, one per count.

    Returns:
        ``{"N_c", "log10_N_c", "log10_N_c_err", "alpha", "alpha_err", "r2"}``;
        standard errors are NaN with only two points. A negative ``alpha`` means
        the loss grew with size.

    Raises:
        ValueError: For fewer than 2 points, non-positive values or mismatched lengths.
    """
    N, L = _check_inputs(N, L)
    x, y = np.log10(N), np.log10(L)
    res = stats.linregress(x, y)
    # log10 L = alpha log10 N_c - alpha log10 N: slope = -alpha, intercept = alpha log10 N_c.
    alpha = -res.slope
    n = len(x)
    if n > 2:
        var_s, var_b = res.stderr**2, res.intercept_stderr**2
        cov_bs = -np.mean(x) * var_s  # OLS covariance of intercept and slope
    else:
        var_s = var_b = cov_bs = float("nan")
    if alpha != 0:
        log10_N_c = res.intercept / alpha
        # Delta method for log10_N_c = -b / s.
        db, ds = -1.0 / res.slope, res.intercept / res.slope**2
        var_c = db**2 * var_b + ds**2 * var_s + 2 * db * ds * cov_bs
        log10_N_c_err = math.sqrt(var_c) if var_c >= 0 else float("nan")
    else:
        log10_N_c = log10_N_c_err = float("nan")
    return {
        "model": POWER_LAW_MODEL,
        "N_c": 10.0**log10_N_c if abs(log10_N_c) < 300 else float("nan"),
        "log10_N_c": log10_N_c,
        "log10_N_c_err": log10_N_c_err,
        "alpha": alpha,
        "alpha_err": math.sqrt(var_s),
        "r2": res.rvalue**2,
    }


def _start(log10_N: np.ndarray, L: np.ndarray, L_inf: float) -> tuple[float, float, float]:
    """Starting (L_inf, log10_N_c, alpha) from a log-log line through L - L_inf."""
    res = stats.linregress(log10_N, np.log10(L - L_inf))
    alpha = float(np.clip(-res.slope, 0.01, ALPHA_MAX - 0.01))
    log10_N_c = float(np.clip(res.intercept / alpha, -50.0, 100.0))
    return L_inf, log10_N_c, alpha


def _fit_saturating(N: np.ndarray, L: np.ndarray) -> dict:
    log10_N, log_L = np.log10(N), np.log(L)
    L_min, n = float(L.min()), len(L)
    out = {
        "model": MODEL,
        "L_inf": float("nan"),
        "L_inf_err": float("nan"),
        "N_c": float("nan"),
        "N_c_err": float("nan"),
        "log10_N_c": float("nan"),
        "log10_N_c_err": float("nan"),
        "alpha": float("nan"),
        "alpha_err": float("nan"),
        "rss": float("nan"),
        "fit_space": "log L",
        "degenerate": True,
        "reason": "",
    }
    if n < 3:
        out["reason"] = f"{n} points cannot constrain 3 parameters"
        return out

    L_inf_max = L_min * (1 - 1e-9)  # strictly below the smallest loss
    lower = (0.0, -60.0, 1e-6)
    upper = (L_inf_max, 110.0, ALPHA_MAX)
    best = None
    for frac in L_INF_FRACTIONS:
        p0 = _start(log10_N, L, frac * L_min)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # OptimizeWarning on an undefined covariance
                popt, pcov = optimize.curve_fit(
                    _saturating_log, log10_N, log_L, p0=p0, bounds=(lower, upper),
                    method="trf", max_nfev=20000,
                )
        except (RuntimeError, ValueError):
            continue
        rss = float(np.sum((_saturating_log(log10_N, *popt) - log_L) ** 2))
        if np.isfinite(rss) and (best is None or rss < best[2]):
            best = (popt, pcov, rss)
    if best is None:
        out["reason"] = "curve_fit failed from every starting point"
        return out

    (L_inf, log10_N_c, alpha), pcov, rss = best
    errs = np.sqrt(np.diag(pcov)) if np.all(np.isfinite(pcov)) else np.full(3, np.nan)
    reasons = []
    if n <= 3:
        reasons.append(f"{n} points for 3 parameters: no degrees of freedom left for errors")
    elif not np.all(np.isfinite(errs)):
        reasons.append("covariance is infinite (parameters not constrained by the data)")
    spread = float(L.max() - L_min)
    if L_min - L_inf <= max(1e-6 * L_min, 1e-3 * spread):
        reasons.append("L_inf is at its upper bound (the smallest observed loss)")
    if L_inf <= 1e-6 * L_min:
        reasons.append("L_inf is at its lower bound 0 (no saturation detected)")
    if alpha >= ALPHA_MAX * (1 - 1e-6):
        reasons.append(f"alpha is at its upper bound {ALPHA_MAX}")
    if alpha <= 1e-5:
        reasons.append("alpha is at its lower bound 0")

    N_c = 10.0**log10_N_c if abs(log10_N_c) < 300 else float("nan")
    out.update(
        L_inf=float(L_inf),
        L_inf_err=float(errs[0]),
        N_c=N_c,
        N_c_err=float(N_c * math.log(10) * errs[1]),
        log10_N_c=float(log10_N_c),
        log10_N_c_err=float(errs[1]),
        alpha=float(alpha),
        alpha_err=float(errs[2]),
        rss=rss,
        degenerate=bool(reasons),
        reason="; ".join(reasons),
    )
    return out


def fit_saturating_power_law(N: Sequence[float], L: Sequence[float]) -> dict:
    """Fit ``L = L_inf + (N_c / N)^alpha`` and, beside it, ``L = (N_c / N)^alpha``.

    The saturating law is fitted on ``log L`` with parameters ``(L_inf, log10 N_c,
    alpha)``, bounds ``0 <= L_inf < min(L)`` and ``0 < alpha <= 5``, from several
    starting points (``L_inf`` a grid of fractions of ``min(L)``); the fit with the
    smallest residual sum of squares is kept. Standard errors come from the
    covariance of that fit, scaled by the residual variance.

    Args:
        N: Parameter counts, one per run (repeated counts, e.g. seeds, are fine).
        L: Final validation losses, one per run.

    Returns:
        A JSON-serialisable dict (NaN written as ``None``)::

            {"model": "L = L_inf + (N_c/N)^alpha", "n_points": int,
             "saturating": {"L_inf", "L_inf_err", "N_c", "N_c_err", "log10_N_c",
                            "log10_N_c_err", "alpha", "alpha_err", "rss", "fit_space",
                            "degenerate": bool, "reason": str, "model"},
             "power_law": {"N_c", "log10_N_c", "log10_N_c_err", "alpha",
                           "alpha_err", "r2", "model"},
             "data": {"N": [...], "L": [...]}}

        ``saturating.degenerate`` is True, with ``reason`` saying why, when the
        uncertainties are not meaningful (too few points, infinite covariance, a
        parameter at its bound).

    Raises:
        ValueError: For fewer than 2 points, non-finite or non-positive values,
            fewer than 2 distinct N, or mismatched lengths.
    """
    N, L = _check_inputs(N, L)
    result = {
        "model": MODEL,
        "n_points": len(N),
        "saturating": _fit_saturating(N, L),
        "power_law": fit_power_law(N, L),
        "data": {"N": N, "L": L},
    }
    return to_jsonable(result)


def predict(
    fit: Mapping[str, Any],
    N: Sequence[float] | float,
    law: Literal["saturating", "power_law"] = "saturating",
) -> np.ndarray:
    """Evaluate a fitted law at parameter counts ``N``.

    Args:
        fit: A result of :func:`fit_saturating_power_law` (possibly read back from
            JSON), or just its ``"saturating"`` / ``"power_law"`` entry.
        N: Parameter counts.
        law: Which law to evaluate.

    Returns:
        Predicted losses, shape of ``N``; NaN where the fit has no value.

    Raises:
        ValueError: For an unknown ``law`` or a ``fit`` lacking its parameters.
    """
    if law not in ("saturating", "power_law"):
        raise ValueError(f"law must be 'saturating' or 'power_law', got {law!r}")
    params = fit.get(law, fit)
    expected = MODEL if law == "saturating" else POWER_LAW_MODEL
    if params.get("model", expected) != expected:
        raise ValueError(f"fit is a {params['model']!r} fit, not the {law!r} law {expected!r}")
    if "log10_N_c" not in params or "alpha" not in params:
        raise ValueError(f"fit has no {law!r} parameters (log10_N_c, alpha): keys {list(params)}")
    log10_N = np.log10(np.asarray(N, dtype=np.float64))
    alpha, log10_N_c = _as_float(params["alpha"]), _as_float(params["log10_N_c"])
    reducible = 10.0 ** (alpha * (log10_N_c - log10_N))
    if law == "power_law":
        return reducible
    return _as_float(params.get("L_inf")) + reducible


def predict_power_law(fit: Mapping[str, Any], N: Sequence[float] | float) -> np.ndarray:
    """Evaluate the plain power law of a fit; see :func:`predict`."""
    return predict(fit, N, law="power_law")
