"""Probes of galaxy properties from embeddings: the AstroPT paper's protocol and stronger ones.

Three protocols, each scored on galaxies its model did not see:

``paper`` (arXiv:2405.14930, "Downstream tasks"), kept exactly:
    drop galaxies whose target is missing (NaN / inf), drop outliers further than
    ``mad_clip`` median absolute deviations from the median, normalise the target as
    ``(y - median) / IQR``, fit ``sklearn.linear_model.LinearRegression`` on the first
    half of the rows (row order) and report the median absolute error (and R^2) on the
    second half.

``ridge_cv``:
    the same normalised target (by default without the paper's clip: ``probe.mad_clip``),
    scored by k-fold cross-validation (shuffled, seeded folds). In each fold a standardised
    ridge regression is fitted on the training folds only, so the standardisation and the
    penalty never see the held-out fold; the penalty is chosen from :data:`RIDGE_ALPHAS` by
    its exact, efficient leave-one-out error (:func:`ridge_loo`: one SVD per fit gives the
    error of every alpha; the same choice and predictions as sklearn's
    ``Pipeline(StandardScaler, RidgeCV)``, about 10x faster):
    this is nested cross-validation at the cost of one fit per fold, where a nested
    ``GridSearchCV`` would refit inner folds x alphas times for the same purpose. R^2
    and the median absolute error are computed on the pooled out-of-fold predictions.
    The target normalisation is an affine map, so R^2 and the chosen penalty do not
    depend on it; it only puts the median absolute error in the paper's IQR units.

``logistic_cv``, for binary flags (see :func:`is_flag`):
    stratified k-fold cross-validation of a standardised, L2-penalised logistic
    regression, its ``C`` chosen from :data:`LOGISTIC_CS` by the log loss of an inner
    stratified k-fold split of the training folds (standardisation refitted in every
    inner fold too). Accuracy (probability >= 0.5) and ROC AUC of the pooled
    out-of-fold probabilities. A flag with fewer than ``min_class_count`` galaxies in
    either class is not probed (NaN scores and a reason).

95 % intervals (:data:`CI_LEVEL`) are percentile bootstraps over galaxies of the
held-out predictions: ``n_boot`` resamples, with replacement, of the (target,
prediction) pairs of the test half (``paper``) or of the out-of-fold predictions
(``ridge_cv``, ``logistic_cv``), the metric recomputed on each, no model refitted.
They measure the uncertainty from which galaxies were scored, conditional on the
fitted models (not the variance of the fit itself, which shrinks as the training
set grows). Every bootstrap resample is computed exactly as the metric on the
resampled galaxies, as multiplicity weights, so it is cheap: see :func:`bootstrap`.

Each result carries a ``reason``: why its scores are NaN (too few rows, a constant
target, a flag class below ``min_class_count``), or notes (the MAD or IQR was 0; the
penalty chosen was the strongest of its grid, i.e. little linear signal; for flags, the
majority-class accuracy that the accuracy should be compared with).

Everything is deterministic given ``seed``, which sets the folds and the bootstrap
draws; the paper's halves follow row order, so the caller shuffles (with a seed)
beforehand if the order carries structure.

Example::

    from astropt.probe import probe_properties
    table = probe_properties(ids, embeddings, metadata, seed=0)  # long format, see PROBE_COLUMNS
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from astropt.config import CI_LEVEL, PROBE_MIN_ROWS
from astropt.io import atomic_write
from astropt.runs import run_name

#: Fewer kept rows than this and a regression probe returns NaN scores instead of fitting
#: (the cross-validated probes also need at least two rows per fold).
MIN_ROWS = PROBE_MIN_ROWS  # (astropt.config holds it: the config check uses it)

#: The paper's twelve probe targets (its downstream and UMAP figures), as metadata columns of
#: Smith42/galaxies_metadata (the synthetic default uses the same names), with short labels.
PAPER_PROPERTIES = {
    "mag_abs_g_photoz": "M_g",
    "mag_abs_z_photoz": "M_z",
    "g_r": "g - r",
    "r_z": "r - z",
    "redshift": "redshift",
    "ssfr_med_photoz": "sSFR",
    "mass_med_photoz": "M*",
    "smooth-or-featured_smooth_fraction": "smooth",
    "smooth-or-featured_featured-or-disk_fraction": "disc",
    "smooth-or-featured_artifact_fraction": "artefact",
    "disk-edge-on_yes_fraction": "edge-on",
    "spiral-winding_tight_fraction": "tight spiral",
}

#: Ridge penalties tried in each fold, on standardised embeddings (half-decade steps). The
#: smallest is about unpenalised for thousands of galaxies; the largest shrinks every
#: coefficient to about 0.
RIDGE_ALPHAS = np.logspace(-3, 7, 21)

#: Inverse logistic penalties tried in each fold, on standardised embeddings (decade steps):
#: from coefficients shrunk to about 0 to about unpenalised.
LOGISTIC_CS = np.logspace(-4, 2, 7)

#: The metrics of each protocol, in output order.
PROTOCOL_METRICS = {
    "paper": ("median_abs_error", "r2"),
    "ridge_cv": ("r2", "median_abs_error"),
    "logistic_cv": ("accuracy", "roc_auc"),
}

#: Direction of each metric: True if a higher value is a better probe.
HIGHER_IS_BETTER = {"median_abs_error": False, "r2": True, "accuracy": True, "roc_auc": True}

#: Columns of the long table returned by :func:`probe_properties` (one row per property,
#: protocol and metric). ``n`` galaxies were scored, of ``n_total`` given: ``n_missing``
#: had no finite target (or embedding) and ``n_clipped`` lay beyond the protocol's MAD clip.
#: ``reason`` is empty, or says why the value is NaN, or notes something about the fit.
PROBE_COLUMNS = ["property", "protocol", "metric", "value", "ci_low", "ci_high",
                 "n", "n_total", "n_missing", "n_clipped", "reason"]

#: Protocols whose targets may be clipped at ``mad_clip`` MADs, and their default (config
#: key ``probe.mad_clip``): the paper's protocol keeps its 3-MAD clip, ridge does not clip.
#: (Flags, probed by ``logistic_cv``, are 0 / 1: never clipped.)
MAD_CLIP = {"paper": 3.0, "ridge_cv": None}

# Bootstrap weights are built in blocks of at most this many (resample x galaxy) cells.
_BLOCK_CELLS = 1 << 21


@dataclass(frozen=True)
class Estimate:
    """A score and its bootstrap interval (NaN where undefined), with the bootstrap's draws
    (one per resample; :func:`aggregate_runs` combines them over runs)."""

    value: float
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    draws: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Kept:
    """Which of the given galaxies a probe scored: ``n`` of ``n_total``; ``n_missing`` had no
    finite target or embedding, ``n_clipped`` lay beyond the MAD clip."""

    n: int
    n_total: int
    n_missing: int = 0
    n_clipped: int = 0


@dataclass
class ProbeResult:
    """One protocol's scores for one property.

    Attributes:
        protocol: A key of :data:`PROTOCOL_METRICS`.
        scores: Metric name -> :class:`Estimate`, for every metric of the protocol.
        reason: ``""``, or why the scores are NaN, or a note about the fit.
        kept: How many galaxies were given, missing and clipped (:class:`Kept`); ``n`` of
            them were used.
    """

    protocol: str
    scores: dict[str, Estimate]
    reason: str
    kept: Kept

    @property
    def n(self) -> int:
        return self.kept.n

    @classmethod
    def skipped(cls, protocol: str, reason: str, kept: Kept) -> ProbeResult:
        """A result with NaN for every metric of ``protocol``, saying why."""
        nan = Estimate(float("nan"))
        return cls(protocol, {m: nan for m in PROTOCOL_METRICS[protocol]}, reason, kept)

    def records(self, prop: str) -> list[dict]:
        """Rows of the long table (:data:`PROBE_COLUMNS`), one per metric, in the order of
        :data:`PROTOCOL_METRICS`."""
        kept = self.kept
        return [
            {
                "property": prop,
                "protocol": self.protocol,
                "metric": metric,
                "value": self.scores[metric].value,
                "ci_low": self.scores[metric].ci_low,
                "ci_high": self.scores[metric].ci_high,
                "n": kept.n,
                "n_total": kept.n_total,
                "n_missing": kept.n_missing,
                "n_clipped": kept.n_clipped,
                "reason": self.reason,
            }
            for metric in PROTOCOL_METRICS[self.protocol]
        ]


class _Skip(Exception):
    """A property that cannot be probed: NaN scores, with ``reason`` and the counts so far."""

    def __init__(self, reason: str, kept: Kept):
        super().__init__(reason)
        self.reason, self.kept = reason, kept


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


# ---------------------------------------------------------------------------------------
# Metrics on weighted samples, and the bootstrap built on them
# ---------------------------------------------------------------------------------------
#
# Each factory takes the scored galaxies' targets and predictions and returns
# ``metric(w)``: for integer multiplicities ``w`` of shape (k, n) the metric of each of the
# k resamples (resample j holds galaxy i ``w[j, i]`` times), shape (k,). A row of ones is
# the plain metric. Work that does not depend on ``w`` (sorting) is done once.


def weighted_r2(y: np.ndarray, pred: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """R^2 (``sklearn.metrics.r2_score``) of weighted samples; NaN for a constant target
    (where ``r2_score`` returns 0 or 1 by convention)."""
    mu = y.mean()  # centring first keeps the sums of squares accurate
    yc, res2 = y - mu, (y - pred) ** 2

    def metric(w: np.ndarray) -> np.ndarray:
        total = w.sum(axis=1)
        ss_tot = w @ (yc * yc) - (w @ yc) ** 2 / total
        ss_res = w @ res2
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.nan)

    return metric


def weighted_median(a: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``np.median`` of weighted samples of ``a``: the middle value (mean of the two middle
    values for an even count) of ``a`` with each value repeated its weight times."""
    order = np.argsort(a, kind="stable")
    a_sorted = a[order]

    def metric(w: np.ndarray) -> np.ndarray:
        cum = np.cumsum(w[:, order], axis=1)
        m = cum[:, -1:]
        lo = np.argmax(cum >= (m + 1) // 2, axis=1)  # 1-based ranks (m+1)//2 and m//2+1
        hi = np.argmax(cum >= m // 2 + 1, axis=1)
        return 0.5 * (a_sorted[lo] + a_sorted[hi])

    return metric


def weighted_accuracy(y: np.ndarray, label: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Fraction of weighted samples with ``label == y``."""
    correct = (label == y).astype(np.float64)
    return lambda w: (w @ correct) / w.sum(axis=1)


def weighted_roc_auc(y: np.ndarray, score: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """ROC AUC (``sklearn.metrics.roc_auc_score``, ties counted one half) of weighted
    samples of binary ``y`` (0/1) scored by ``score``; NaN where a class is absent.

    AUC = sum over positives i of w_i x (negative weight scored below i + half the
    negative weight scored equal to i), over (positive weight x negative weight).
    """
    order = np.argsort(score, kind="stable")
    s = score[order]
    pos = y[order] == 1
    below = np.searchsorted(s, s[pos], side="left")  # negatives strictly below: cum[:, below]
    upto = np.searchsorted(s, s[pos], side="right")  # ... and up to ties: cum[:, upto]

    def metric(w: np.ndarray) -> np.ndarray:
        ws = w[:, order].astype(np.float64)
        neg = np.where(pos, 0.0, ws)
        cum = np.zeros((len(w), len(s) + 1))
        np.cumsum(neg, axis=1, out=cum[:, 1:])
        wins = cum[:, below] + 0.5 * (cum[:, upto] - cum[:, below])
        n_pos, n_neg = ws[:, pos].sum(axis=1), cum[:, -1]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(n_pos * n_neg > 0, (ws[:, pos] * wins).sum(axis=1) / (n_pos * n_neg), np.nan)

    return metric


def bootstrap(
    metrics: dict[str, Callable[[np.ndarray], np.ndarray]],
    n: int,
    n_boot: int,
    seed: int,
    level: float = CI_LEVEL,
) -> dict[str, Estimate]:
    """Each metric on all ``n`` galaxies, with a percentile bootstrap interval.

    Galaxies are resampled with replacement ``n_boot`` times (the same resamples for
    every metric) and each metric is recomputed on each resample; the interval is the
    central ``level`` range of the finite resampled values. The resamples are drawn in
    blocks (memory stays bounded for large ``n``); they depend only on ``seed``, ``n``
    and ``n_boot``.

    Args:
        metrics: Name -> weighted metric, as made by ``weighted_*``.
        n: Number of scored galaxies.
        n_boot: Resamples; 0 gives NaN intervals.
        seed: Seed of the resamples.
        level: Interval coverage.

    Returns:
        Name -> :class:`Estimate` (with its ``n_boot`` draws, NaN where a resample had none).
    """
    point = {name: float(f(np.ones((1, n), dtype=np.int64))[0]) for name, f in metrics.items()}
    draws: dict[str, list[np.ndarray]] = {name: [] for name in metrics}
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // n)
    for start in range(0, n_boot, block):
        k = min(block, n_boot - start)
        idx = rng.integers(0, n, size=(k, n)) + n * np.arange(k)[:, None]
        w = np.bincount(idx.ravel(), minlength=k * n).reshape(k, n)
        for name, f in metrics.items():
            draws[name].append(f(w))
    out = {}
    tail = 100 * (1 - level) / 2
    for name, value in point.items():
        every = np.concatenate(draws[name]) if draws[name] else np.empty(0)
        boot = every[np.isfinite(every)]
        lo, hi = np.percentile(boot, [tail, 100 - tail]) if len(boot) else (np.nan, np.nan)
        out[name] = Estimate(value, float(lo), float(hi), every)
    return out


# ---------------------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------------------


def _clip_of(mad_clip, protocol: str) -> float:
    """The clip threshold of a protocol: ``mad_clip`` itself (a number applies to every
    regression protocol), or its entry in a mapping (:data:`MAD_CLIP`); None or a missing
    entry: no clipping (inf)."""
    if isinstance(mad_clip, dict):
        mad_clip = mad_clip.get(protocol)
    return math.inf if mad_clip is None else float(mad_clip)


def _finite_rows(X, y) -> tuple[np.ndarray, np.ndarray, int]:
    """Check shapes; keep the rows whose target and embedding are finite (and say how many were given)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n, d), got shape {X.shape}")
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"y must have shape ({len(X)},) to match X {X.shape}, got {y.shape}")
    keep = np.isfinite(y) & np.isfinite(X).all(axis=1)
    return X[keep], y[keep], len(y)


def _regression_target(X, y, mad_clip: float, min_rows: int) -> tuple[np.ndarray, np.ndarray, str, Kept]:
    """The paper's target cleaning, shared by the regression protocols.

    Returns ``(X, z, note, kept)``: the kept rows, the normalised target ``(y - median) / IQR``,
    a note (e.g. that nothing was clipped because the MAD is 0) and the counts (:class:`Kept`).

    Raises:
        _Skip: Fewer than ``min_rows`` rows, or a constant target.
    """
    X, y, n_total = _finite_rows(X, y)
    missing = n_total - len(y)
    if len(y) < min_rows:
        raise _Skip(f"only {len(y)} finite rows (< {min_rows})", Kept(len(y), n_total, missing))
    note = ""
    med = np.median(y)
    if np.isfinite(mad_clip) and mad_clip > 0:
        mad = np.median(np.abs(y - med))
        if mad > 0:
            inlier = np.abs(y - med) <= mad_clip * mad
            X, y = X[inlier], y[inlier]
            med = np.median(y)
        else:
            note = "MAD is 0: no outlier clipping"
    kept = Kept(len(y), n_total, missing, n_total - missing - len(y))
    if len(y) < min_rows:
        raise _Skip(f"only {len(y)} rows after outlier clipping (< {min_rows})", kept)
    q25, q75 = np.percentile(y, [25, 75])
    scale = q75 - q25
    if not scale > 0:
        scale = np.std(y)
        if not scale > 0:
            raise _Skip("target is constant (IQR and std are 0)", kept)
        note = _join(note, "IQR is 0: normalised by std")
    return X, (y - med) / scale, note, kept


def _regression_scores(z, pred, n_boot: int, seed: int) -> dict[str, Estimate]:
    metrics = {
        "median_abs_error": weighted_median(np.abs(pred - z)),
        "r2": weighted_r2(z, pred),
    }
    return bootstrap(metrics, len(z), n_boot, seed)


def paper_probe(X, y, mad_clip: float | None = 3.0, n_boot: int = 1000, seed: int = 0) -> ProbeResult:
    """Probe one property with the paper's linear-regression protocol.

    Rows whose target or embedding is not finite are dropped, then rows with
    ``|y - median(y)| > mad_clip * MAD`` (MAD unscaled; no clipping when the MAD is 0,
    as for vote fractions that are mostly 0). The target is normalised as
    ``(y - median) / IQR`` (the standard deviation if the IQR is 0), a linear
    regression is fitted on the first half of the remaining rows, in the given order,
    and scored on the second half. The intervals bootstrap the second half's
    (target, prediction) pairs.

    Args:
        X: Embeddings, shape (n, d).
        y: Target property, shape (n,).
        mad_clip: Outlier threshold in median absolute deviations; ``inf`` or a
            non-positive value disables clipping.
        n_boot: Bootstrap resamples of the test half (0: NaN intervals).
        seed: Seed of the bootstrap.

    Returns:
        Scores ``median_abs_error`` and ``r2`` on the held-out half, in normalised
        target units; ``n`` counts both halves (the first ``n // 2`` rows train).

    Raises:
        ValueError: If ``X`` is not 2-D or ``y`` does not have one value per row.
    """
    try:
        X, z, note, kept = _regression_target(X, y, _clip_of(mad_clip, "paper"), MIN_ROWS)
    except _Skip as skip:
        return ProbeResult.skipped("paper", skip.reason, skip.kept)
    n_train = len(z) // 2
    pred = LinearRegression().fit(X[:n_train], z[:n_train]).predict(X[n_train:])
    return ProbeResult("paper", _regression_scores(z[n_train:], pred, n_boot, seed), note, kept)


def _strongest_penalty_note(chosen: list[float], strongest: float, name: str) -> str:
    """Say in how many folds the chosen penalty was the grid's strongest, i.e. the model was
    shrunk as far as the grid allows: the embedding carries little linear signal of the
    target. (The weakest end is benign: the fit is then close to unpenalised.)"""
    k = sum(bool(np.isclose(c, strongest)) for c in chosen)
    if not k:
        return ""
    return f"{name} at the strongest penalty of the grid ({strongest:g}) in {k} of {len(chosen)} folds"


def ridge_cv_probe(
    X, y, mad_clip: float | None = None, folds: int = 5, n_boot: int = 1000, seed: int = 0
) -> ProbeResult:
    """Probe one property with k-fold ridge regression, its penalty chosen inside each fold.

    The rows and the normalised target are those of :func:`paper_probe`, except that by
    default nothing is clipped (``mad_clip`` None: the paper's 3-MAD clip removes, on the
    synthetic default, every artefact stamp from the artefact vote fraction). Folds are
    shuffled with ``seed``; each fold's model is a standardised ridge regression with the
    leave-one-out choice of alpha from :data:`RIDGE_ALPHAS` (:func:`ridge_loo`), fitted on
    the other folds.
    ``reason`` notes folds whose alpha was the grid's largest (the embedding carries
    little linear signal of this property).

    Args:
        X: Embeddings, shape (n, d).
        y: Target property, shape (n,).
        mad_clip: Outlier threshold, as in :func:`paper_probe`; None: no clipping.
        folds: Cross-validation folds (at least 2).
        n_boot: Bootstrap resamples of the out-of-fold predictions (0: NaN intervals).
        seed: Seed of the folds and of the bootstrap.

    Returns:
        Out-of-fold ``r2`` and ``median_abs_error`` (normalised target units), pooled over
        the folds; ``n`` galaxies, each predicted once.

    Raises:
        ValueError: If ``X`` is not 2-D or ``y`` does not have one value per row.
    """
    try:
        X, z, note, kept = _regression_target(X, y, _clip_of(mad_clip, "ridge_cv"), max(MIN_ROWS, 2 * folds))
    except _Skip as skip:
        return ProbeResult.skipped("ridge_cv", skip.reason, skip.kept)
    pred = np.empty_like(z)
    alphas = []
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(X):
        pred[test], alpha = ridge_loo(X[train], z[train], X[test])
        alphas.append(alpha)
    note = _join(note, _strongest_penalty_note(alphas, RIDGE_ALPHAS[-1], "ridge alpha"))
    return ProbeResult("ridge_cv", _regression_scores(z, pred, n_boot, seed), note, kept)


def ridge_loo(X: np.ndarray, y: np.ndarray, X_new: np.ndarray, alphas: np.ndarray = RIDGE_ALPHAS
              ) -> tuple[np.ndarray, float]:
    """Ridge regression of standardised ``X`` with the penalty of least leave-one-out error.

    What ``make_pipeline(StandardScaler(), RidgeCV(alphas)).fit(X, y).predict(X_new)`` does,
    from one thin SVD of the standardised, centred ``X = U S V^T``: for every alpha the fitted
    values are ``mean(y) + U diag(s^2 / (s^2 + alpha)) U^T (y - mean y)`` and the leverages
    ``1/n + sum_j U_ij^2 s_j^2 / (s_j^2 + alpha)`` (the intercept is not penalised), so the
    leave-one-out residuals ``(y - fit) / (1 - leverage)`` of all alphas cost one matrix
    product. The first alpha of least mean squared LOO residual is chosen (as ``RidgeCV``).

    Returns:
        The predictions for ``X_new`` and the alpha chosen.
    """
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0  # as StandardScaler: constant columns are left unscaled
    A = (X - mean) / scale
    y_mean = y.mean()
    yc = y - y_mean
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    Uty = U.T @ yc
    s2 = s * s
    shrink = s2[None, :] / (s2[None, :] + np.asarray(alphas, dtype=np.float64)[:, None])  # (k, p)
    fitted = U @ (shrink * Uty).T  # (n, k), centred
    leverage = (U * U) @ shrink.T + 1.0 / len(y)
    loo = (yc[:, None] - fitted) / (1.0 - leverage)
    best = int(np.argmin(np.mean(loo * loo, axis=0)))
    alpha = float(alphas[best])
    coef = Vt.T @ (s / (s2 + alpha) * Uty)
    return y_mean + ((X_new - mean) / scale) @ coef, alpha


def _logistic(C: float, warm_start: bool = False) -> LogisticRegression:
    """An L2 logistic regression (of standardised embeddings).

    Newton-Cholesky converges in a few exact Newton steps whatever the conditioning
    (embedding dimensions are strongly correlated; L-BFGS needs hundreds of iterations
    at weak penalties there), at a cost of one d x d system per step. With ``warm_start``
    a refit at another ``C`` starts from the last solution.
    """
    return LogisticRegression(C=C, solver="newton-cholesky", max_iter=100, warm_start=warm_start)


def _log_loss_sum(y: np.ndarray, prob: np.ndarray) -> float:
    """Summed binary log loss (``sklearn.metrics.log_loss`` without its per-call checks)."""
    eps = np.finfo(np.float64).eps
    prob = np.clip(prob, eps, 1 - eps)
    return float(-(y * np.log(prob) + (1 - y) * np.log1p(-prob)).sum())


def _choose_C(X, y, folds: int, seed: int) -> float:
    """The C of :data:`LOGISTIC_CS` with the least log loss over an inner stratified k-fold
    split (the standardisation fitted on each inner training part).

    Each inner fold walks the grid from the strongest penalty up, every fit warm-started
    from the one before (the regularisation path): about half the Newton steps of cold fits,
    to the same optimum within the solver's tolerance."""
    loss = np.zeros(len(LOGISTIC_CS))
    for train, val in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y):
        scaler = StandardScaler().fit(X[train])
        X_train, X_val = scaler.transform(X[train]), scaler.transform(X[val])
        model = _logistic(LOGISTIC_CS[0], warm_start=True)
        for i, C in enumerate(LOGISTIC_CS):  # ascending
            prob = model.set_params(C=C).fit(X_train, y[train]).predict_proba(X_val)[:, 1]
            loss[i] += _log_loss_sum(y[val], prob)
    return float(LOGISTIC_CS[np.argmin(loss)])


def _check_class_count(min_class_count: int, folds: int, key: str = "") -> None:
    if min_class_count < 2 * folds:
        raise ValueError(f"{key}min_class_count ({min_class_count}) must be at least 2 x {key}folds ({2 * folds}) "
                         "so that every inner and outer training fold holds both classes")


def logistic_cv_probe(
    X, y, folds: int = 5, n_boot: int = 1000, seed: int = 0, min_class_count: int = 20
) -> ProbeResult:
    """Probe one binary flag with stratified k-fold logistic regression, C chosen inside each fold.

    Rows whose flag or embedding is not finite are dropped. Each outer fold chooses C
    by an inner stratified ``folds``-fold log loss on its training folds, refits there
    and predicts probabilities for the held-out fold. ``reason`` gives the majority-class
    accuracy (the accuracy of always guessing the commoner class, the baseline to beat)
    and notes folds whose C was the grid's smallest (little linear signal) or fits that
    stopped at ``max_iter``.

    Args:
        X: Embeddings, shape (n, d).
        y: Flag, shape (n,): 0 / 1 (or booleans), NaN where unknown.
        folds: Outer and inner cross-validation folds (at least 2).
        n_boot: Bootstrap resamples of the out-of-fold predictions (0: NaN intervals).
        seed: Seed of the folds and of the bootstrap.
        min_class_count: Fewer galaxies than this in either class and the flag is not
            probed (NaN scores); must be at least ``2 * folds`` so that every inner and
            outer training set holds both classes.

    Returns:
        Out-of-fold ``accuracy`` (probability >= 0.5) and ``roc_auc``.

    Raises:
        ValueError: On bad shapes, values other than 0 / 1, or ``min_class_count < 2 * folds``.
    """
    _check_class_count(min_class_count, folds)
    X, y, n_total = _finite_rows(X, y)
    kept = Kept(len(y), n_total, n_total - len(y))
    bad = np.setdiff1d(np.unique(y), [0.0, 1.0])
    if len(bad):
        raise ValueError(f"a flag must be 0 or 1, found values {bad[:5].tolist()}")
    y = y.astype(np.int64)
    counts = np.bincount(y, minlength=2)
    if counts.min() < min_class_count:
        cls = int(np.argmin(counts))
        return ProbeResult.skipped(
            "logistic_cv", f"class {cls} has {counts[cls]} galaxies (< min_class_count {min_class_count})",
            kept,
        )
    prob = np.empty(len(y))
    chosen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y):
            C = _choose_C(X[train], y[train], folds, seed)
            model = make_pipeline(StandardScaler(), _logistic(C)).fit(X[train], y[train])
            prob[test] = model.predict_proba(X[test])[:, 1]
            chosen.append(C)
    not_converged = 0
    for w in caught:  # convergence is reported in `reason`; anything else passes on
        if issubclass(w.category, ConvergenceWarning):
            not_converged += 1
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    note = _join(
        f"majority-class accuracy {counts.max() / len(y):.3f}",
        _strongest_penalty_note(chosen, LOGISTIC_CS[0], "logistic C"),
        f"{not_converged} logistic fits stopped at max_iter" if not_converged else "",
    )
    metrics = {
        "accuracy": weighted_accuracy(y, (prob >= 0.5).astype(np.int64)),
        "roc_auc": weighted_roc_auc(y, prob),
    }
    return ProbeResult("logistic_cv", bootstrap(metrics, len(y), n_boot, seed), note, kept)


# ---------------------------------------------------------------------------------------
# Tables of properties
# ---------------------------------------------------------------------------------------


def is_flag(values: pd.Series) -> bool:
    """Whether a column is a binary flag: boolean, or numeric with every non-null value 0 or 1."""
    if pd.api.types.is_bool_dtype(values):
        return True
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_complex_dtype(values):
        return False
    v = values.to_numpy(dtype=np.float64, na_value=np.nan)
    v = v[~np.isnan(v)]
    return len(v) > 0 and bool(np.isin(v, (0.0, 1.0)).all())


def numeric_properties(
    metadata: pd.DataFrame,
    exclude: Sequence[str] = ("id", "split", "image_path", "row"),
) -> list[str]:
    """Names of the metadata columns worth probing.

    Args:
        metadata: Galaxy metadata, one row per galaxy.
        exclude: Column names never returned (identifiers, bookkeeping).

    Returns:
        Numeric (integer, float or boolean) columns, in table order, that are not in
        ``exclude`` and have at least two distinct finite values.
    """
    names = []
    for name in metadata.columns:
        col = metadata[name]
        if name in exclude or not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_complex_dtype(col):
            continue  # (booleans are numeric)
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
        values = values[np.isfinite(values)]
        if len(values) and values.min() < values.max():
            names.append(name)
    return names


def _metadata_by_id(metadata: pd.DataFrame) -> pd.DataFrame:
    if "id" in metadata.columns:
        table = metadata.set_index("id")
    elif metadata.index.name == "id":
        table = metadata
    else:
        raise ValueError(
            "metadata has no 'id' column (or index) to join embeddings on; "
            f"columns are {list(metadata.columns)[:10]}"
        )
    if not table.index.is_unique:
        dup = table.index[table.index.duplicated()].unique()
        raise ValueError(
            f"metadata has {len(dup)} duplicated ids, e.g. {list(dup[:5])}; ids must be unique"
        )
    return table


def _probe_targets(ids, X, metadata, properties, flags, folds: int, min_class_count: int):
    """The metadata rows of ``ids`` (in order), the properties to probe and the flags among
    them, checked as :func:`probe_properties` documents (the ValueErrors it raises)."""
    if ids.ndim != 1 or X.ndim != 2 or len(ids) != len(X):
        raise ValueError(
            f"ids (shape {ids.shape}) must list one id per row of X (shape {X.shape})"
        )
    _check_class_count(min_class_count, folds, "probe.")
    table = _metadata_by_id(metadata)
    missing_mask = ~pd.Index(ids).isin(table.index)
    if missing_mask.any():
        missing = ids[missing_mask]
        hint = ""
        if missing_mask.all():
            hint = (
                f" (no id matches at all: ids have dtype {ids.dtype}, metadata ids "
                f"{table.index.dtype}; convert one to the other)"
            )
        raise ValueError(
            f"{missing_mask.sum()} of {len(ids)} ids are missing from the metadata, "
            f"e.g. {missing[:5].tolist()}{hint}"
        )

    if properties is None:
        properties = numeric_properties(table.reset_index())
    else:
        unknown = [p for p in properties if p not in table.columns]
        if unknown:
            raise ValueError(
                f"probe.properties: {unknown} are not metadata columns; available: "
                f"{list(table.columns)}"
            )

    rows = table.loc[ids]
    if flags is None:
        flags = [p for p in properties if is_flag(rows[p])]
    else:
        stray = [f for f in flags if f not in properties]
        if stray:
            raise ValueError(f"probe.flags: {stray} are not probed properties {list(properties)}")
        not_binary = [f for f in flags if not is_flag(rows[f])]
        if not_binary:
            raise ValueError(f"probe.flags: {not_binary} have values other than 0 / 1 (or booleans)")

    return rows, properties, flags


def probe_properties(
    ids: np.ndarray,
    X: np.ndarray,
    metadata: pd.DataFrame,
    properties: list[str] | None = None,
    flags: list[str] | None = None,
    mad_clip: float | Mapping[str, float | None] | None = None,
    folds: int = 5,
    n_boot: int = 1000,
    min_class_count: int = 20,
    seed: int = 0,
    return_draws: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Probe every property of the galaxies whose embeddings are given.

    Rows of ``X`` are matched to metadata rows through ``ids`` (the metadata ``id``
    column, or its index if named ``id``); the order of ``ids`` is kept, so the paper's
    train / test halves are the first / second half of ``ids``. Regression targets get
    the ``paper`` and ``ridge_cv`` protocols, flags the ``logistic_cv`` one.

    Args:
        ids: Galaxy ids, shape (n,), one per row of ``X``.
        X: Embeddings, shape (n, d).
        metadata: Galaxy metadata with an ``id`` column; any row order.
        properties: Columns to probe; default :func:`numeric_properties`.
        flags: Which of ``properties`` are binary flags; default those that
            :func:`is_flag`; ``[]``: none.
        mad_clip: Outlier threshold of the regression targets (see :func:`paper_probe`) per
            protocol, ``{"paper": 3.0, "ridge_cv": None}`` (None: no clipping); a number
            applies to both; default :data:`MAD_CLIP`.
        folds: Cross-validation folds of ``ridge_cv`` and ``logistic_cv``.
        n_boot: Bootstrap resamples for the intervals (0: NaN intervals).
        min_class_count: Smallest class size for which a flag is probed.
        seed: Seed of the folds and bootstrap resamples (the same for every property).
        return_draws: Also return every metric's bootstrap draws (:data:`DRAW_COLUMNS`),
            for :func:`aggregate_runs`.

    Returns:
        The long table :data:`PROBE_COLUMNS`: per property (in order), its protocols and
        their metrics (:data:`PROTOCOL_METRICS`); with ``return_draws``, ``(table, draws)``.

    Raises:
        ValueError: If ``ids`` and ``X`` disagree in length, ids are missing from the
            metadata (the count and the first few are named), a requested property is
            not a metadata column, a flag is not a probed property or not binary, or
            ``min_class_count < 2 * folds``.
    """
    ids, X = np.asarray(ids), np.asarray(X)
    rows, properties, flags = _probe_targets(ids, X, metadata, properties, flags, folds, min_class_count)
    if mad_clip is None:
        mad_clip = MAD_CLIP
    records, draws = [], []
    for prop in properties:
        y = pd.to_numeric(rows[prop], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if prop in flags:
            results = [logistic_cv_probe(X, y, folds, n_boot, seed, min_class_count)]
        else:
            results = [
                paper_probe(X, y, _clip_of(mad_clip, "paper"), n_boot, seed),
                ridge_cv_probe(X, y, _clip_of(mad_clip, "ridge_cv"), folds, n_boot, seed),
            ]
        for res in results:
            records.extend(res.records(prop))
            for metric in PROTOCOL_METRICS[res.protocol]:
                d = res.scores[metric].draws
                draws.append({"property": prop, "protocol": res.protocol, "metric": metric,
                              "draws": np.full(n_boot, np.nan) if d is None else d})
    table = pd.DataFrame.from_records(records, columns=PROBE_COLUMNS)
    return (table, pd.DataFrame.from_records(draws, columns=DRAW_COLUMNS)) if return_draws else table


#: Columns of the bootstrap draws table (:func:`probe_properties` with ``return_draws``):
#: ``draws`` holds the metric on each galaxy resample (the same resamples for every run
#: probed with the same seed), NaN where there was none.
DRAW_COLUMNS = ["property", "protocol", "metric", "draws"]

#: Columns of :func:`aggregate_runs`: a size's probes over its runs (``results/probes/{size}.csv``).
AGGREGATE_COLUMNS = ["property", "protocol", "metric", "value", "ci_low", "ci_high", "run_sd", "run_min",
                     "run_max", "n_runs", "ci_dof", "n", "n_total", "n_missing", "n_clipped", "reason"]


def _check_runs(tables: Mapping[str, pd.DataFrame], draws: Mapping[str, pd.DataFrame], keys: list[str]) -> pd.DataFrame:
    """The first run's table, after checking that every run has draws and was probed on the
    same rows and galaxies (:func:`aggregate_runs`' ValueErrors)."""
    names = list(tables)
    if not names:
        raise ValueError("aggregate_runs needs the probe table of at least one run")
    if set(draws) != set(names):
        raise ValueError(f"probe tables of runs {sorted(names)} but draws of {sorted(draws)}")
    first = tables[names[0]].reset_index(drop=True)
    for name in names[1:]:
        other = tables[name].reset_index(drop=True)
        if not other[keys].equals(first[keys]):
            raise ValueError(f"runs {names[0]} and {name} probed different properties / protocols / metrics")
        if not other[["n", "n_total"]].equals(first[["n", "n_total"]]):
            raise ValueError(f"runs {names[0]} and {name} were probed on different galaxies (counts differ)")
    return first


def _run_draws(draws: Mapping[str, pd.DataFrame], names: list[str], base: pd.Series, keys: list[str]) -> np.ndarray:
    """The bootstrap draws of one (property, protocol, metric) row, one row per run: (runs, n_boot)."""
    stacked = []
    for name in names:
        d = draws[name]
        hit = d[(d["property"] == base["property"]) & (d["protocol"] == base["protocol"])
                & (d["metric"] == base["metric"])]
        if len(hit) != 1:
            raise ValueError(f"run {name} has {len(hit)} draw rows for {tuple(base[keys])}")
        stacked.append(np.asarray(hit["draws"].iloc[0], dtype=np.float64))
    return np.vstack(stacked)


def aggregate_runs(
    tables: Mapping[str, pd.DataFrame],
    draws: Mapping[str, pd.DataFrame],
    n_boot: int = 1000,
    seed: int = 0,
    ci_level: float = CI_LEVEL,
) -> pd.DataFrame:
    """One size's probe scores over its runs: the mean, the between-run spread and an interval
    that holds both the run-to-run and the galaxy-to-galaxy variation.

    The interval resamples runs, then galaxies (:func:`astropt.resample.resample_runs`): every
    run was probed on the same galaxies with the same bootstrap resamples (one seed), so
    replicate ``b`` averages draw ``b`` of runs drawn with replacement. Its ends are
    t-calibrated for the few runs (:mod:`astropt.resample`: the between-run variance has
    ``runs - 1`` degrees of freedom, the galaxy part is taken as known). With one run it is
    that run's galaxy bootstrap.

    Args:
        tables: Run name (e.g. ``"seed0"``) -> its long table (:data:`PROBE_COLUMNS`).
        draws: Run name -> its draws (:data:`DRAW_COLUMNS`), same runs as ``tables``.
        n_boot: Replicates of the two-level bootstrap.
        seed: Seed of the run draws.
        ci_level: Interval level.

    Returns:
        :data:`AGGREGATE_COLUMNS`, one row per (property, protocol, metric) in the first run's
        order: ``value`` the mean over runs, ``run_sd`` their standard deviation (ddof 1; NaN
        for one run), ``run_min`` / ``run_max``, ``n_runs`` the runs with a finite value,
        ``ci_dof`` the interval's Satterthwaite degrees of freedom; counts from the first
        run (they depend on the targets only); ``reason`` the distinct reasons of the runs.

    Raises:
        ValueError: If no runs are given, the runs' tables or draws disagree in their rows,
            or they were probed on different galaxies.
    """
    from astropt.resample import calibrated_interval, calibration_factor, resample_runs, satterthwaite

    names, keys = list(tables), ["property", "protocol", "metric"]
    first = _check_runs(tables, draws, keys)
    values = np.column_stack([tables[n]["value"].to_numpy(dtype=np.float64) for n in names])  # (rows, R)
    rng = np.random.default_rng(seed)
    rows = []
    for i, base in first.iterrows():
        ok = np.isfinite(values[i])
        v, runs, nan = values[i][ok], int(ok.sum()), float("nan")
        D = _run_draws(draws, names, base, keys)[ok]
        mean, lo, hi = (float(v.mean()), float(v.min()), float(v.max())) if runs else (nan, nan, nan)
        sd = float(v.std(ddof=1)) if runs > 1 else nan
        ci, nu = None, nan
        if D.size and np.isfinite(D).any():
            gal = float(np.nanvar(np.nanmean(D, axis=0)))
            nu = satterthwaite([(gal, math.inf), (sd * sd / runs, runs - 1)])  # one run: sd NaN, ignored
            ci, _ = calibrated_interval(mean, resample_runs(D, n_boot, rng), ci_level, calibration_factor(nu, ci_level))
        ci = ci or [nan, nan]
        reasons = list(dict.fromkeys(r for r in (tables[n]["reason"].iloc[i] for n in names)
                                     if isinstance(r, str) and r))
        rows.append({
            **{k: base[k] for k in keys}, "value": mean, "ci_low": ci[0], "ci_high": ci[1],
            "run_sd": sd, "run_min": lo, "run_max": hi, "n_runs": runs,
            "ci_dof": nu, **{c: base[c] for c in ("n", "n_total", "n_missing", "n_clipped")},
            "reason": " | ".join(reasons),
        })
    return pd.DataFrame.from_records(rows, columns=AGGREGATE_COLUMNS)


#: Columns of :func:`downstream_table` (``results/probes/summary.csv``).
SUMMARY_COLUMNS = [
    "property", "protocol", "metric", "higher_is_better", "size", "params",
    "value", "value_sd", "n_runs", "relative", "relative_sd", "spearman_rho", "spearman_p",
    "seeds_agree", "seeds_rho",
]


# Up to this many sizes, Spearman's p-value is exact (every ordering enumerated: 8! = 40,320).
_EXACT_SPEARMAN_MAX = 8


def _spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's rho between ``x`` and ``y`` (finite pairs) and its two-sided p-value.

    For up to :data:`_EXACT_SPEARMAN_MAX` pairs the p-value is exact: the fraction of all
    orderings of ``y`` whose |rho| is at least the observed one (with 4 sizes the smallest
    possible is 2/24 = 0.083); beyond that, scipy's t approximation. NaN when fewer than
    two pairs or either side is constant.
    """
    from scipy import stats  # here: about 1.5 s to import, which most figures never need

    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    rx, ry = stats.rankdata(x), stats.rankdata(y)  # average ranks for ties
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = np.sqrt((rx @ rx) * (ry @ ry))
    rho = float(rx @ ry / norm)
    if len(x) > _EXACT_SPEARMAN_MAX:
        return rho, float(stats.spearmanr(x, y).pvalue)
    orderings = np.array(list(itertools.permutations(range(len(x)))))
    null = ry[orderings] @ rx / norm
    return rho, float(np.mean(np.abs(null) >= abs(rho) - 1e-12))


def downstream_table(probes: pd.DataFrame) -> pd.DataFrame:
    """Probe scores of every size relative to the smallest model, with Spearman's rho.

    The paper's convention: ``relative`` is each size's score divided by the smallest
    model's score for the same property, protocol and metric, whatever the metric's
    direction. So for ``median_abs_error`` (lower is better) a probe that improves with
    size has ``relative`` < 1 and ``spearman_rho`` < 0; for ``r2``, ``accuracy`` and
    ``roc_auc`` (higher is better), ``relative`` > 1 and ``spearman_rho`` > 0. The
    ``higher_is_better`` column says which. ``relative`` is NaN where the smallest
    model's score is not finite or not positive (a ratio to an R^2 <= 0 means nothing).

    Several runs of a size (training seeds) are averaged: ``value`` is their mean, ``value_sd``
    their standard deviation (NaN for one run) and ``relative_sd`` the same relative to the
    smallest model's mean. Spearman's rho is computed from the run means; with a ``seed``
    column, each seed's own sweep (its run of every size) gets a rho too, and
    ``seeds_agree`` is the share of seeds whose rho has the sign of the means' rho
    (``seeds_rho`` lists them, ``;``-separated, in seed order).

    Args:
        probes: The long probe tables of all runs (``astropt.probe.PROBE_COLUMNS``)
            with columns ``size`` and ``params`` (and ``seed``) added.

    Returns:
        :data:`SUMMARY_COLUMNS`, one row per property, protocol, metric and size, in the
        input order of (property, protocol, metric), then by params. ``spearman_rho`` and
        ``spearman_p`` (see :func:`_spearman`) are between params and ``value``, repeated
        on each size's row.

    Raises:
        ValueError: If a column is missing or a metric has no known direction.
    """
    missing = [c for c in ("size", "params", "property", "protocol", "metric", "value") if c not in probes]
    if missing:
        raise ValueError(f"probe table lacks columns {missing}; it has {list(probes.columns)}")
    unknown = sorted(set(probes["metric"]) - set(HIGHER_IS_BETTER))
    if unknown:
        raise ValueError(f"probe table has metrics {unknown} of unknown direction; known: {sorted(HIGHER_IS_BETTER)}")
    keys = ["property", "protocol", "metric"]
    probes = probes.assign(seed=probes["seed"] if "seed" in probes else 0)
    agg = (probes.groupby([*keys, "size", "params"], sort=False)["value"]
           .agg(value="mean", value_sd="std", n_runs="count").reset_index())
    parts = []
    for (prop, protocol, metric), grp in agg.groupby(keys, sort=False):
        grp = grp.sort_values("params", kind="stable")
        base = grp["value"].iloc[0]
        ok = np.isfinite(base) and base > 0
        grp["relative"] = grp["value"] / base if ok else np.nan
        grp["relative_sd"] = grp["value_sd"] / base if ok else np.nan
        rho, p = _spearman(grp["params"].to_numpy(dtype=float), grp["value"].to_numpy(dtype=float))
        grp["spearman_rho"], grp["spearman_p"] = rho, p
        mine = probes[(probes["property"] == prop) & (probes["protocol"] == protocol) & (probes["metric"] == metric)]
        seed_rhos = [_spearman(sweep["params"].to_numpy(dtype=float), sweep["value"].to_numpy(dtype=float))[0]
                     for _, sweep in mine.groupby("seed", sort=True)]
        finite = [r for r in seed_rhos if np.isfinite(r)]
        agree = (sum(np.sign(r) == np.sign(rho) for r in finite) / len(finite)
                 if len(seed_rhos) > 1 and finite and np.isfinite(rho) and rho != 0 else np.nan)
        grp["seeds_agree"] = agree
        grp["seeds_rho"] = (";".join(f"{r:+.2f}" if np.isfinite(r) else "n/a" for r in seed_rhos)
                            if len(seed_rhos) > 1 else "")
        grp["higher_is_better"] = HIGHER_IS_BETTER[metric]
        parts.append(grp)
    if not parts:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    return pd.concat(parts, ignore_index=True)[SUMMARY_COLUMNS]


# The probe stages: what the workflow's probe, probe_size and downstream rules call.

# Colours the paper probes, derived from apparent magnitudes when the catalogue lacks them.
DERIVED_COLOURS = {"g_r": ("mag_g_desi", "mag_r_desi"), "r_z": ("mag_r_desi", "mag_z_desi")}


def read_metadata(path: str | Path) -> pd.DataFrame:
    """The galaxy catalogue, with the colours ``g_r`` / ``r_z`` added where they can be derived."""
    meta = pd.read_parquet(path)
    for colour, (a, b) in DERIVED_COLOURS.items():
        if colour not in meta.columns and a in meta.columns and b in meta.columns:
            meta[colour] = meta[a] - meta[b]
    return meta


def probe_run(
    embeddings: str | Path,
    metadata: str | Path,
    out_csv: str | Path,
    probe_cfg: dict,
    seed: int,
    threads: int = 1,
    log=print,
    out_draws: str | Path | None = None,
) -> pd.DataFrame:
    """Probes of every property from one run's embeddings: the paper's linear regression and
    k-fold ridge for regression targets, k-fold logistic regression for binary flags, with
    bootstrap intervals. Writes the long table (``astropt.probe.PROBE_COLUMNS``: one row per
    property, protocol and metric) and, to ``out_draws``, the bootstrap draws of every metric
    (``astropt.probe.DRAW_COLUMNS``, parquet) that :func:`probe_size` combines over runs.

    ``probe_cfg`` is the config's ``probe`` section; ``seed`` sets the folds and the
    bootstrap resamples (the same for every run, so that the runs' draws pair up);
    ``threads`` caps the BLAS threads (the job's CPUs).
    """
    from threadpoolctl import threadpool_limits

    from astropt.embed import read_embeddings

    ids, X = read_embeddings(embeddings)
    meta = read_metadata(metadata)
    log(
        f"probing {len(ids):,} galaxies x {X.shape[1]} dims from {embeddings}: "
        f"{probe_cfg['folds']} folds, {probe_cfg['n_boot']} bootstrap resamples, seed {seed}"
    )
    t0 = time.perf_counter()
    with threadpool_limits(max(1, int(threads))):
        table, draws = probe_properties(
            ids,
            X,
            meta,
            properties=probe_cfg["properties"],
            flags=probe_cfg["flags"],
            mad_clip=probe_cfg["mad_clip"],
            folds=probe_cfg["folds"],
            n_boot=probe_cfg["n_boot"],
            min_class_count=probe_cfg["min_class_count"],
            seed=seed,
            return_draws=True,
        )
    for (prop, protocol), rows in table.groupby(["property", "protocol"], sort=False):
        scores = "  ".join(
            f"{r.metric}={r.value:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}]" for r in rows.itertuples()
        )
        note = rows["reason"].iloc[0]
        first = rows.iloc[0]
        dropped = f" (of {first.n_total}: {first.n_missing} missing, {first.n_clipped} clipped)" if first.n < first.n_total else ""
        log(f"  {prop:<28} {protocol:<11} n={first.n:<6}{dropped} {scores}" + (f"  ({note})" if note else ""))
    log(f"probed {table['property'].nunique()} properties in {time.perf_counter() - t0:.1f} s")
    atomic_write(out_csv, lambda tmp: table.to_csv(tmp, index=False))
    if out_draws is not None:
        atomic_write(out_draws, lambda tmp: draws.to_parquet(tmp, index=False))
    return table


def probe_size(tables, draws, out_csv: str | Path, n_boot: int, seed: int, log=print) -> pd.DataFrame:
    """One size's probes over its runs (``results/probes/{size}.csv``): the mean of its runs,
    their spread and an interval that resamples runs, then galaxies
    (:func:`aggregate_runs`)."""
    by_run = {f"seed{run_name(p)[1]}": pd.read_csv(p) for p in tables}
    runs_draws = {f"seed{run_name(p)[1]}": pd.read_parquet(p) for p in draws}
    table = aggregate_runs(by_run, runs_draws, n_boot=n_boot, seed=seed)
    size = run_name(tables[0])[0]
    log(f"{size}: probes of {len(by_run)} run(s) ({', '.join(by_run)}): mean, between-run sd, "
        f"intervals over runs and galaxies ({n_boot} replicates)")
    for r in table.itertuples():
        log(f"  {r.property:<28} {r.protocol:<11} {r.metric:<16} {r.value:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}]"
            f" sd {r.run_sd:.4f} over {r.n_runs} runs")
    atomic_write(out_csv, lambda tmp: table.to_csv(tmp, index=False))
    return table


def downstream_summary(probe_paths, sidecars, out_csv: str | Path, log=print) -> pd.DataFrame:
    """``results/probes/summary.csv``: each size's probe scores (the mean of its runs, with
    their spread) relative to the smallest model's, with Spearman's rho between parameters and
    the run means and the share of seeds whose own sweep agrees, for every property, protocol
    and metric (:func:`downstream_table`). ``probe_paths`` are the runs' tables,
    ``results/probes/{size}/seed{seed}.csv``; ``sidecars`` their ``ckpt.json`` (parameters)."""
    from astropt.runs import load_sidecars

    sizes = load_sidecars(sidecars).drop_duplicates("size").set_index("size")["params"]
    frames = []
    for p in probe_paths:
        size, seed = run_name(p)
        df = pd.read_csv(p)
        df["size"], df["params"], df["seed"] = size, int(sizes[size]), seed
        frames.append(df)
    summary = downstream_table(pd.concat(frames, ignore_index=True))
    atomic_write(out_csv, lambda tmp: summary.to_csv(tmp, index=False))
    log(f"wrote {out_csv}: {summary['property'].nunique()} properties x {summary['size'].nunique()} sizes")
    return summary
