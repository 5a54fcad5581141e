"""astropt.chinchilla: Chinchilla's L(N, D) fit over a grid of runs, its bootstrap intervals,
the compute-optimal allocation, and grids too sparse to tell.

Run: python -m pytest tests/test_chinchilla.py -q       (the coverage check is marked slow)
"""

import math

import numpy as np
import pytest

from astropt.chinchilla import fit_grid, optimal_allocation, predict

# Hoffmann et al.'s (2022) fitted law, the truth of the simulated grids
TRUTH = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
TRUTH_A = TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"])  # N_opt ~ C^a


def _grid(rng, sd, n_sizes=4, n_budgets=3, seeds=2):
    Ns, Ds = np.geomspace(1e7, 1e9, n_sizes), np.geomspace(1e9, 1e11, n_budgets)
    N, D = (np.repeat(v.ravel(), seeds) for v in np.meshgrid(Ns, Ds))
    L = predict(TRUTH, N, D) * np.exp(sd * rng.standard_normal(len(N)))
    return N, D, L


def test_recovers_the_law_and_the_allocation():
    N, D, L = _grid(np.random.default_rng(1), sd=0.001, n_sizes=5, n_budgets=4)
    fit = fit_grid(N, D, L, n_boot=0)
    assert fit["alpha"] == pytest.approx(TRUTH["alpha"], abs=0.02)
    assert fit["beta"] == pytest.approx(TRUTH["beta"], abs=0.02)
    assert fit["E"] == pytest.approx(TRUTH["E"], rel=0.03)
    assert fit["a"] == pytest.approx(TRUTH_A, abs=0.02) and fit["a"] + fit["b"] == pytest.approx(1)
    # the allocation spends the compute: 6 N_opt D_opt = C, and N_opt minimises the loss there
    C = 1e21
    n_opt, d_opt = optimal_allocation(fit, C)
    assert 6 * n_opt * d_opt == pytest.approx(C)
    Ns = n_opt * np.geomspace(0.5, 2, 9)
    assert np.argmin(predict(fit, Ns, C / (6 * Ns))) == 4
    assert fit["unidentified"] == {} and fit["alpha_ci"] is None  # no resamples, no intervals


def test_intervals_hold_the_truth_on_a_noisy_grid():
    N, D, L = _grid(np.random.default_rng(2), sd=0.01)
    fit = fit_grid(N, D, L, n_boot=200, seed=0)
    for name, truth in (("alpha", TRUTH["alpha"]), ("beta", TRUTH["beta"])):
        lo, hi = fit[f"{name}_ci"]
        assert lo < fit[name] < hi and lo < truth < hi
    assert fit["n_runs"] == 24 and fit["n_cells"] == 12 and fit["boot_failed"] == 0


def test_one_budget_cannot_tell_beta_or_the_allocation():
    N, D, L = _grid(np.random.default_rng(3), sd=0.01, n_budgets=1)
    fit = fit_grid(N, D, L, n_boot=20)
    for name in ("beta", "B", "E", "a", "b", "G"):
        assert fit[name] is None and fit[f"{name}_ci"] is None
        assert "one token budget" in fit["unidentified"][name]
    assert fit["alpha"] is not None  # the size dependence is still measured
    assert fit["boot_failed"] == 0  # the unidentified ones are not counted as failed refits


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="one value per run"):
        fit_grid([1e6] * 5, [1e9] * 4, [2.0] * 5)
    with pytest.raises(ValueError, match="L must be finite and positive"):
        fit_grid([1e6, 2e6, 4e6, 8e6, 1.6e7], [1e9] * 5, [2.0, 2.0, -1.0, 2.0, 2.0])


@pytest.mark.slow
def test_bootstrap_covers_alpha_beta_and_a_at_the_stated_rate():
    """24 simulated 4 x 3 x 2 grids with 1 % noise (60 resamples each, about 2 minutes): each
    95 % interval holds the truth at least 19 times (the binomial 99.5 % lower bound around
    22.8)."""
    rng = np.random.default_rng(7)
    hits = {"alpha": 0, "beta": 0, "a": 0}
    truths = {"alpha": TRUTH["alpha"], "beta": TRUTH["beta"], "a": TRUTH_A}
    sims = 24
    for _ in range(sims):
        N, D, L = _grid(rng, sd=0.01)
        fit = fit_grid(N, D, L, n_boot=60, seed=int(rng.integers(1 << 30)))
        for k in hits:
            lo, hi = fit[f"{k}_ci"]
            hits[k] += lo <= truths[k] <= hi
    assert all(19 <= h <= sims for h in hits.values()), hits
