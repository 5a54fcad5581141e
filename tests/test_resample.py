"""Bootstrap helpers over few replicate runs (astropt.resample): the within-size resampling,
its small-sample corrections and the runs-then-galaxies bootstrap of the probes.

Run: python -m pytest tests/test_resample.py -q
"""

import math

import numpy as np
import pytest
from scipy import stats

from astropt.resample import (
    calibrated_interval,
    calibration_factor,
    group_codes,
    group_shares,
    group_variances,
    resample_runs,
    resample_within_groups,
    satterthwaite,
)


def test_within_group_resamples_keep_each_run_in_its_group_with_unbiased_spread():
    y = np.array([1.0, 2.0, 3.0, 10.0, 10.0, 7.0])
    codes, labels = group_codes(["a", "a", "a", "b", "b", "c"])
    assert labels == ["a", "b", "c"] and codes.tolist() == [0, 0, 0, 1, 1, 2]
    Y, means = resample_within_groups(y, codes, 20000, np.random.default_rng(0))
    assert Y.shape == (20000, 6) and means.shape == (20000, 3)
    assert np.allclose(Y[:, 5], 7.0) and np.allclose(means[:, 2], 7.0)  # one run: kept as it is
    inflated = 2.0 + np.sqrt(1.5) * (np.array([1.0, 2.0, 3.0]) - 2.0)
    assert set(np.round(Y[:, 0], 9)) == set(np.round(inflated, 9))  # only its own group's (inflated) runs
    # the resampled mean's variance is s^2 / m (unbiased), not (m - 1) / m of it
    assert means[:, 0].var() == pytest.approx(np.var([1, 2, 3], ddof=1) / 3, rel=0.03)
    plain, plain_means = resample_within_groups(y, codes, 20000, np.random.default_rng(0), inflate=False)
    assert plain_means[:, 0].var() == pytest.approx(np.var([1, 2, 3], ddof=0) / 3, rel=0.03)
    var, counts = group_variances(y, codes)
    assert var[0] == pytest.approx(1.0) and np.isnan(var[2]) and counts.tolist() == [3, 2, 1]


def test_group_shares_recover_a_linear_statistic():
    rng = np.random.default_rng(1)
    means = rng.normal(size=(500, 3))
    stat = 2.0 * means[:, 0] - 0.5 * means[:, 2] + 3.0
    assert group_shares(stat, means) == pytest.approx([2.0, 0.0, -0.5], abs=1e-9)
    fixed = means.copy()
    fixed[:, 1] = 4.0  # a group that never varies (one run) gets no share
    assert group_shares(2.0 * fixed[:, 0], fixed)[1] == 0.0


def test_satterthwaite_and_the_calibration_factor():
    assert satterthwaite([(1.0, 4)]) == pytest.approx(4)
    assert satterthwaite([(1.0, 2), (1.0, 2)]) == pytest.approx(4)  # two equal parts add their df
    assert satterthwaite([(1.0, 2), (0.0, 2)]) == pytest.approx(2)
    assert math.isinf(satterthwaite([(1.0, math.inf)])) and math.isinf(satterthwaite([]))
    assert calibration_factor(math.inf, 0.95) == 1.0
    assert calibration_factor(4, 0.95) == pytest.approx(stats.t.ppf(0.975, 4) / stats.norm.ppf(0.975))


def test_calibrated_interval_widens_around_the_estimate_and_marks_bounds():
    r = np.linspace(-1, 1, 1001)
    ci, opened = calibrated_interval(0.0, r, 0.95)
    assert ci == pytest.approx([-0.95, 0.95], abs=1e-3) and opened == [False, False]
    ci, _ = calibrated_interval(0.0, r, 0.95, factor=2.0)
    assert ci == pytest.approx([-1.9, 1.9], abs=2e-3)
    ci, opened = calibrated_interval(0.0, r, 0.95, factor=2.0, bounds=(-1.0, 5.0))
    assert ci[0] == -1.0 and opened == [True, False]
    assert calibrated_interval(0.0, np.array([np.nan]), 0.95) == (None, [False, False])


def test_runs_then_galaxies_bootstrap_holds_both_variances():
    """Runs with a shared galaxy resample each: the replicate's variance is the galaxy part
    plus the between-run part over R."""
    rng = np.random.default_rng(2)
    R, B = 4, 4000
    galaxy = rng.normal(0, 0.02, size=B)  # the same galaxy resample moves every run alike
    offsets = np.array([0.50, 0.56, 0.53, 0.47])  # the runs differ by more than that
    draws = offsets[:, None] + galaxy[None, :]
    rep = resample_runs(draws, B, np.random.default_rng(3))
    expected = galaxy.var() + offsets.var(ddof=1) / R
    assert rep.var() == pytest.approx(expected, rel=0.1)
    assert rep.mean() == pytest.approx(offsets.mean(), abs=0.003)
    one = resample_runs(draws[:1], B, np.random.default_rng(3))
    assert np.allclose(one, draws[0])  # one run: its own galaxy bootstrap
