"""Tests of the scaling-law fits (astropt.scaling): recovery of known laws, intervals that
cover the truth at their stated rate, degenerate cases, the tables.

Run: python -m pytest tests/test_scaling.py -q
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from astropt.io import to_jsonable
from astropt.scaling import fit_power_law, fit_scaling_laws, predict
from astropt.tables import TABLE_COLUMNS, fit_table, table_cells, table_latex, table_markdown
from scaling_helpers import fit_saturating_power_law, predict_power_law

N = np.logspace(4, 9, 8)
TRUE = {"L_inf": 0.15, "N_c": 1e3, "alpha": 0.3}  # reducible part 77% -> 10% of L
TOKENS = 1.2e6  # tokens seen by every size: compute C = 6 N D


def _law(N, L_inf=TRUE["L_inf"], N_c=TRUE["N_c"], alpha=TRUE["alpha"]):
    return L_inf + (N_c / N) ** alpha


def _binomial_band(n, level, tail=0.998):
    """Coverage rates consistent with ``level`` for ``n`` simulated data sets (99.8 %)."""
    lo, hi = stats.binom.interval(tail, n, level)
    return lo / n, hi / n


def _covers(ci, truth):
    return ci is not None and ci[0] <= truth <= ci[1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_saturating_fit_recovers_known_exponent(seed):
    rng = np.random.default_rng(seed)
    L = _law(N) * (1 + 0.01 * rng.standard_normal(len(N)))
    sat = fit_saturating_power_law(N, L)["saturating"]
    assert not sat["degenerate"], sat["reason"]
    assert abs(sat["alpha"] - TRUE["alpha"]) < 3 * sat["alpha_err"]
    assert abs(sat["alpha"] - TRUE["alpha"]) < 0.05
    assert abs(sat["L_inf"] - TRUE["L_inf"]) < max(3 * sat["L_inf_err"], 0.01)
    assert abs(sat["log10_N_c"] - 3) < 3 * sat["log10_N_c_err"]
    assert sat["N_c"] == pytest.approx(10 ** sat["log10_N_c"])
    for key in ("alpha", "L_inf", "log10_N_c"):
        lo, hi = sat[f"{key}_ci"]
        assert lo < sat[key] < hi
    assert sat["N_c_ci"] == pytest.approx([10**v for v in sat["log10_N_c_ci"]])
    assert sat["dof"] == len(N) - 3 and sat["ci_level"] == 0.95


@pytest.mark.parametrize("variable", ["N", "C"])
@pytest.mark.parametrize("law", ["saturating", "power_law"])
def test_both_laws_recover_known_exponents_against_both_variables(variable, law):
    rng = np.random.default_rng(7)
    X = N if variable == "N" else 6 * N * TOKENS
    X_c = TRUE["N_c"] * (1 if variable == "N" else 6 * TOKENS)
    alpha = 0.25
    clean = (TRUE["L_inf"] if law == "saturating" else 0.0) + (X_c / X) ** alpha
    fit = fit_scaling_laws(X, clean * np.exp(0.01 * rng.standard_normal(len(X))), variable=variable)
    assert fit["variable"] == variable and fit["n_points"] == len(X) and fit["ci_level"] == 0.95
    assert fit["model"] == f"L = L_inf + ({variable}_c/{variable})^alpha"
    assert set(fit["data"]) == {variable, "L"}
    p = fit[law]
    assert p["variable"] == variable
    assert f"log10_{variable}_c" in p and f"{variable}_c" in p and f"log10_{variable}_c_ci" in p
    assert not p["degenerate"], p["reason"]
    assert abs(p["alpha"] - alpha) < 3 * p["alpha_err"]
    assert _covers(p["alpha_ci"], alpha)
    assert abs(p[f"log10_{variable}_c"] - math.log10(X_c)) < 3 * p[f"log10_{variable}_c_err"]
    assert predict(fit, X, law=law) == pytest.approx(clean, rel=0.03)


def test_noiseless_saturating_fit_is_exact():
    fit = fit_saturating_power_law(N, _law(N))
    sat = fit["saturating"]
    assert sat["alpha"] == pytest.approx(0.3, rel=1e-5)
    assert sat["L_inf"] == pytest.approx(0.15, rel=1e-5)
    assert sat["log10_N_c"] == pytest.approx(3.0, abs=1e-4)
    assert predict(fit, N) == pytest.approx(_law(N), rel=1e-6)
    assert sat["alpha_ci"] == pytest.approx([0.3, 0.3], rel=1e-5)  # no noise: no width


def test_log_log_fit_is_exact_without_noise():
    L = (2e3 / N) ** 0.25
    pl = fit_saturating_power_law(N, L)["power_law"]
    assert pl["alpha"] == pytest.approx(0.25, rel=1e-10)
    assert pl["log10_N_c"] == pytest.approx(math.log10(2e3), rel=1e-10)
    assert pl["r2"] == pytest.approx(1.0)
    assert predict_power_law({"power_law": pl}, N) == pytest.approx(L, rel=1e-10)
    # A pure power law has no floor: the saturating L_inf sits at its lower bound 0.
    sat = fit_saturating_power_law(N, L)["saturating"]
    assert sat["L_inf"] == pytest.approx(0.0, abs=1e-6)
    assert sat["degenerate"] and "lower bound" in sat["reason"]
    assert sat["alpha_ci"] is None and sat["L_inf_ci"] is None  # degenerate: no intervals


def test_log_log_errors_match_scatter():
    rng = np.random.default_rng(0)
    alphas = [
        fit_power_law(N, (1e3 / N) ** 0.3 * np.exp(0.02 * rng.standard_normal(len(N))))
        for _ in range(200)
    ]
    spread = np.std([a["alpha"] for a in alphas])
    mean_err = np.mean([a["alpha_err"] for a in alphas])
    assert mean_err == pytest.approx(spread, rel=0.3)


def test_power_law_intervals_cover_at_the_stated_rate():
    """Student-t (alpha) and Fieller (log10 N_c) intervals: exact, so ~95 % of 400 sets."""
    rng = np.random.default_rng(1)
    Ns, reps, alpha, log10_c = np.logspace(4.5, 7, 6), 400, 0.3, 3.0
    hits = {"alpha": 0, "log10_N_c": 0, "naive": 0}
    for _ in range(reps):
        L = (10**log10_c / Ns) ** alpha * np.exp(0.03 * rng.standard_normal(len(Ns)))
        pl = fit_power_law(Ns, L)
        hits["alpha"] += _covers(pl["alpha_ci"], alpha)
        hits["log10_N_c"] += _covers(pl["log10_N_c_ci"], log10_c)
        hits["naive"] += abs(pl["alpha"] - alpha) <= 1.96 * pl["alpha_err"]  # normal, not t(4)
    lo, hi = _binomial_band(reps, 0.95)
    rates = {k: v / reps for k, v in hits.items()}
    assert lo <= rates["alpha"] <= hi, rates
    assert lo <= rates["log10_N_c"] <= hi, rates
    # The band is narrow enough to catch intervals with the wrong quantile (~88 % expected).
    assert rates["naive"] < lo, rates


def test_saturating_intervals_cover_at_the_stated_rate():
    """Profile-likelihood intervals of alpha, L_inf and log10 N_c contain the truth in
    ~95 % of 300 simulated data sets (7 sizes over 2.5 decades, 2 % log-normal noise)."""
    rng = np.random.default_rng(2024)
    Ns, reps = np.logspace(4.5, 7, 7), 300
    truth = {"L_inf": 0.05, "alpha": 0.3, "log10_N_c": 3.0}
    clean = truth["L_inf"] + (10 ** truth["log10_N_c"] / Ns) ** truth["alpha"]
    hits = dict.fromkeys(truth, 0)
    naive = degenerate = 0
    for _ in range(reps):
        sat = fit_saturating_power_law(Ns, clean * np.exp(0.02 * rng.standard_normal(len(Ns))))["saturating"]
        degenerate += sat["degenerate"]
        for key, value in truth.items():
            hits[key] += _covers(sat[f"{key}_ci"], value)  # degenerate: no interval, counted as a miss
        if not sat["degenerate"]:
            naive += abs(sat["alpha"] - truth["alpha"]) <= 1.96 * sat["alpha_err"]
    lo, hi = _binomial_band(reps, 0.95)
    rates = {k: v / reps for k, v in hits.items()}
    assert degenerate <= 0.02 * reps
    for key, rate in rates.items():
        assert lo <= rate <= hi, (key, rates)
    assert naive / reps < lo, naive / reps  # normal quantile with 4 dof under-covers


def test_profile_interval_ends_lie_on_the_profile_threshold():
    """An independent check: at each end, the best fit with that parameter held (scipy,
    several starts) has RSS = RSS_min (1 + t^2 / dof)."""
    rng = np.random.default_rng(3)
    Ns = np.logspace(4.5, 7, 7)
    L = (0.05 + (1e3 / Ns) ** 0.3) * np.exp(0.02 * rng.standard_normal(len(Ns)))
    sat = fit_saturating_power_law(Ns, L)["saturating"]
    x, y = np.log10(Ns), np.log(L)
    t = stats.t.ppf(0.975, sat["dof"])
    threshold = sat["rss"] * (1 + t * t / sat["dof"])

    def profile(which, value):
        def resid(q):
            L_inf, c, a = {"alpha": (q[0], q[1], value), "L_inf": (value, q[0], q[1]),
                           "log10_N_c": (q[0], value, q[1])}[which]
            return np.log(L_inf + 10 ** (a * (c - x))) - y

        bounds = {"alpha": ([0, -60], [1, 100]), "L_inf": ([-60, 1e-6], [100, 5]),
                  "log10_N_c": ([0, 1e-6], [1, 5])}[which]
        starts = {"alpha": [[0.0, 3], [0.04, 3], [0.06, 3]], "L_inf": [[3, 0.1], [3, 0.3], [3, 1.0]],
                  "log10_N_c": [[0.0, 0.3], [0.04, 0.3], [0.06, 0.3]]}[which]
        return min(2 * optimize.least_squares(resid, s, bounds=bounds).cost for s in starts)

    crossings = 0
    for key in ("alpha", "L_inf", "log10_N_c"):
        for end, is_open in zip(sat[f"{key}_ci"], sat["ci_open"][key]):
            if is_open:  # a bound of the fit, still inside the threshold
                assert profile(key, end) <= threshold, key
            else:
                assert profile(key, end) == pytest.approx(threshold, rel=2e-3), key
                crossings += 1
    assert crossings >= 5


def test_unconstrained_intervals_reach_the_bounds_and_say_so():
    # The four default sizes of the README: one degree of freedom, t(1) = 12.7.
    Ns = np.array([42_496, 85_920, 144_192, 416_064])
    sat = fit_saturating_power_law(Ns, [0.05885, 0.05773, 0.05184, 0.05028])["saturating"]
    assert not sat["degenerate"] and sat["dof"] == 1
    assert sat["alpha_ci"] == pytest.approx([0.0, 5.0], abs=1e-5)
    assert sat["ci_open"]["alpha"] == [True, True]
    assert sat["L_inf_ci"][0] == 0.0 and sat["ci_open"]["L_inf"][0]


def test_three_points_are_flagged_degenerate_not_crashed():
    fit = fit_saturating_power_law(N[:3], _law(N[:3]))
    sat = fit["saturating"]
    assert sat["degenerate"] is True
    assert "3 points" in sat["reason"]
    assert sat["alpha_err"] is None  # NaN written as None
    assert sat["alpha_ci"] is None and sat["ci_open"] is None
    assert fit["power_law"]["alpha"] > 0
    two = fit_saturating_power_law(N[:2], _law(N[:2]))
    assert two["saturating"]["degenerate"] and two["saturating"]["alpha"] is None
    assert two["power_law"]["alpha_err"] is None and two["power_law"]["alpha_ci"] is None
    assert two["power_law"]["degenerate"] and two["power_law"]["dof"] == 0
    assert np.isnan(predict(two, N)).all()
    assert np.isfinite(predict(two, N, law="power_law")).all()


def test_parameters_at_bounds_are_flagged():
    # A step then a flat floor: L_inf lands on the floor, alpha runs to its bound.
    sat = fit_saturating_power_law(N[:5], [0.30, 0.18, 0.18, 0.18, 0.18])["saturating"]
    assert sat["degenerate"] and "alpha is at its upper bound" in sat["reason"]
    assert sat["L_inf"] == pytest.approx(0.18, rel=1e-3)
    # Loss falling faster than a power law: no floor, L_inf at 0.
    sat = fit_saturating_power_law(N[:5], [0.20, 0.195, 0.185, 0.17, 0.15])["saturating"]
    assert sat["degenerate"] and "lower bound 0" in sat["reason"]
    assert sat["L_inf_ci"] is None


def test_result_is_json_serialisable_and_round_trips():
    rng = np.random.default_rng(0)
    fit = fit_saturating_power_law(N, _law(N) * (1 + 0.01 * rng.standard_normal(len(N))))
    back = json.loads(json.dumps(fit, allow_nan=False))
    assert back == fit
    assert set(back) >= {"model", "variable", "n_points", "ci_level", "saturating", "power_law", "data"}
    assert back["n_points"] == 8 and len(back["data"]["N"]) == 8
    assert predict(back, [1e5, 1e6]) == pytest.approx(predict(fit, [1e5, 1e6]))
    compute = fit_scaling_laws(6 * N * TOKENS, _law(N), variable="C")
    assert predict(json.loads(json.dumps(compute)), 6e7 * TOKENS) == pytest.approx(_law(1e7), rel=1e-5)
    deg = fit_saturating_power_law(N[:3], _law(N[:3]))
    json.dumps(deg, allow_nan=False)


def test_to_jsonable():
    obj = {"a": np.float32(1.5), "b": np.array([1.0, np.nan]), "c": (np.int64(2), np.inf),
           "d": np.bool_(True), 3: "x"}
    assert to_jsonable(obj) == {"a": 1.5, "b": [1.0, None], "c": [2, None], "d": True, "3": "x"}


@pytest.mark.parametrize(
    "N_, L_, match",
    [
        ([1e6], [0.2], "at least 2"),
        ([1e6, 1e7], [0.2], "differ in length"),
        ([1e6, -1e7], [0.2, 0.1], "N .* positive"),
        ([1e6, 1e7], [0.2, 0.0], "L .* positive"),
        ([1e6, 1e7], [0.2, np.nan], "L .* finite"),
        ([1e6, 1e6], [0.2, 0.1], "distinct"),
    ],
)
def test_bad_input_raises(N_, L_, match):
    with pytest.raises(ValueError, match=match):
        fit_saturating_power_law(N_, L_)


def test_bad_variable_or_level_raises():
    with pytest.raises(ValueError, match="variable must be one of"):
        fit_scaling_laws(N, _law(N), variable="D")
    with pytest.raises(ValueError, match="ci_level"):
        fit_scaling_laws(N, _law(N), ci_level=95)
    with pytest.raises(ValueError, match=r"C \(training compute"):
        fit_scaling_laws([1e12, -1.0], [0.2, 0.1], variable="C")


def test_predict_rejects_unknown_law():
    fit = fit_saturating_power_law(N, _law(N))
    with pytest.raises(ValueError, match="law must be"):
        predict(fit, N, law="linear")
    with pytest.raises(ValueError, match="not the 'power_law' law"):
        predict(fit["saturating"], N, law="power_law")


@pytest.fixture
def fits():
    """fit.json of the scaling rule for the README's four sizes."""
    Ns = np.array([42_496, 85_920, 144_192, 416_064])
    L = [0.05885, 0.05773, 0.05184, 0.05028]
    return {"sizes": ["42K", "85K", "144K", "416K"], "n_points": 4, "ci_level": 0.95,
            "params": fit_scaling_laws(Ns, L, "N"), "compute": fit_scaling_laws(6 * Ns * TOKENS, L, "C")}


def test_fit_table_is_tidy(fits):
    table = fit_table(fits)
    assert list(table.columns) == TABLE_COLUMNS
    assert list(zip(table["fit"], table["variable"], table["law"])) == [
        ("params", "N", "saturating"), ("params", "N", "power_law"),
        ("compute", "C", "saturating"), ("compute", "C", "power_law"),
    ]
    sat = fits["params"]["saturating"]
    row = table.iloc[0]
    assert row["alpha"] == pytest.approx(sat["alpha"]) and row["alpha_err"] == pytest.approx(sat["alpha_err"])
    assert [row["alpha_lo"], row["alpha_hi"]] == pytest.approx(sat["alpha_ci"])
    assert row["log10_X_c"] == pytest.approx(sat["log10_N_c"])
    assert "alpha upper" in row["open_ends"] and "L_inf lower" in row["open_ends"]
    assert np.isnan(table.iloc[1]["L_inf"])  # no floor in the power law
    assert table["dof"].tolist() == [1, 2, 1, 2]
    # A single fit result works too, and an entry without a fit gives one row saying why.
    assert len(fit_table(fits["params"])) == 2
    none = fit_table({"params": {"variable": "N", "n_points": 1, "error": "a scaling fit needs at least two sizes"}})
    assert none["law"].tolist() == ["none"] and "no fit" in none["reason"].iloc[0]
    with pytest.raises(ValueError, match="no scaling fits"):
        fit_table({"sizes": ["1M"]})


def test_markdown_and_latex_tables(fits):
    floorless = fit_scaling_laws(N[:5], [0.20, 0.195, 0.185, 0.17, 0.15])  # degenerate: L_inf at 0
    table = pd.concat([fit_table(fits), fit_table({"floorless": floorless})], ignore_index=True)
    md = table_markdown(table)
    lines = md.splitlines()
    assert lines[0].startswith("| variable | law | α |") and lines[1].startswith("|---|")
    assert len({line.count("|") for line in lines[:8]}) == 1  # every row has every column
    assert "N (parameters) | saturating | 0.3 ± 1.1 [0.0†, 5.0†]" in md
    assert "† interval end at a bound" in md and "(1) L_inf is at its lower bound 0" in md
    header, rows, notes = table_cells(table)
    assert header[:3] == ["variable", "law", "α"] and len(rows) == 6 and all(len(r) == len(header) for r in rows)
    assert rows[-2][-1] == "(1)" and notes == ["L_inf is at its lower bound 0 (no saturation detected)"]
    tex = table_latex(table)
    assert tex.count("\\toprule") == tex.count("\\midrule") == tex.count("\\bottomrule") == 1
    assert "$0.3 \\pm 1.1\\;[0.0^\\dagger, 5.0^\\dagger]$" in tex
    body = tex.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines()
    assert len(body) == 6 and all(r.count("&") == len(header) - 1 and r.endswith("\\\\") for r in body)
    notes = tex.split("\\bottomrule")[1]
    assert "(1) L\\_inf is at its lower bound 0" in notes  # reasons below the rule, escaped
    assert "%" not in tex.replace("\\%", "").split("\n", 1)[1]  # no stray comment characters


# --------------------------------------------------------------------------- fits over runs

from astropt.scaling import fit_runs, fit_study, headline, holdout_test  # noqa: E402

SWEEP = np.array([42e3, 85e3, 144e3, 416e3])  # the embedded default's sizes
ALPHA = 0.1  # L = (N_c / N)^alpha, loss 0.069 .. 0.054 over the sweep
N_C = 1e-7


def _sweep(rng, seeds=3, sd=0.04, sizes=SWEEP, alpha=ALPHA):
    """Runs of a power law with log-normal run-to-run noise (4 % in L, as tiny models show)."""
    N = np.repeat(sizes, seeds)
    groups = np.repeat([f"{int(n / 1e3)}K" for n in sizes], seeds)
    L = (N_C / N) ** alpha * np.exp(sd * rng.standard_normal(len(N)))
    return N, L, groups


def test_bootstrap_over_runs_covers_the_exponent_at_its_stated_rate():
    """4 sizes x 3 seeds: the plain percentile bootstrap would cover about 81 % here; the
    inflated, t-calibrated one (astropt.resample) must cover at the stated 95 %."""
    rng = np.random.default_rng(10)
    sims, hits, analytic = 300, 0, 0
    for _ in range(sims):
        N, L, g = _sweep(rng)
        fit = fit_runs(N, L, g, n_boot=400, seed=int(rng.integers(1 << 30)), boot_laws=("power_law",))
        pl = fit["power_law"]
        hits += _covers(pl["alpha_boot_ci"], ALPHA)
        analytic += _covers(pl["alpha_ci"], ALPHA)
    lo, hi = _binomial_band(sims, 0.95)
    assert lo <= hits / sims <= hi, hits / sims
    assert lo <= analytic / sims <= hi, analytic / sims  # Student-t on every run: exact here


def test_held_out_prediction_interval_covers_at_its_stated_rate():
    rng = np.random.default_rng(11)
    sims, mean_hits, run_hits, runs = 200, 0, 0, 0
    for _ in range(sims):
        N, L, g = _sweep(rng)
        h = holdout_test(N, L, g, "416K", n_boot=400, seed=int(rng.integers(1 << 30)))
        mean_hits += bool(h["inside_mean"])
        run_hits += h["runs_inside"]
        runs += h["n_runs"]
    lo, hi = _binomial_band(sims, 0.95)
    assert lo <= mean_hits / sims <= hi, mean_hits / sims
    # The runs of one sweep share its fit: a looser band for the pooled single-run rate.
    assert 0.9 <= run_hits / runs <= 0.995, run_hits / runs


def test_a_missed_prediction_is_stated_plainly():
    rng = np.random.default_rng(12)
    N, L, g = _sweep(rng, sd=0.005)
    L[g == "416K"] *= 1.3  # the largest size stalls: far above the law's extrapolation
    h = holdout_test(N, L, g, "416K", n_boot=300)
    assert h["inside_mean"] is False and h["runs_inside"] == 0
    assert "above the 95 % prediction interval" in h["verdict"] and "MISSED" in h["verdict"]
    assert h["pi_mean"][1] < h["observed_mean"]


def test_huber_estimator_shrugs_off_outlying_runs():
    """Two runs stuck on a plateau (+50 % loss) pull least squares off; Huber's fit keeps the law."""
    rng = np.random.default_rng(13)
    N, L, g = _sweep(rng, seeds=4, sd=0.01, sizes=np.geomspace(3e4, 3e6, 5))
    L[[0, 5]] *= 1.5  # the first runs of the two smallest sizes
    ls = fit_runs(N, L, g, n_boot=0)["power_law"]["alpha"]
    hub = fit_runs(N, L, g, n_boot=100, estimator="huber", boot_laws=("power_law",))
    assert abs(hub["power_law"]["alpha"] - ALPHA) < 0.01 < abs(ls - ALPHA)
    assert hub["estimator"] == "huber" and hub["power_law"]["alpha_ci"] is None  # no analytic interval
    lo, hi = hub["power_law"]["alpha_boot_ci"]
    assert lo < hub["power_law"]["alpha"] < hi
    assert hub["least_squares"]["power_law"]["alpha"] == pytest.approx(ls)


@pytest.mark.slow
def test_huber_estimator_recovers_a_saturating_law_with_outliers():
    rng = np.random.default_rng(14)
    N = np.repeat(np.geomspace(1e4, 1e8, 7), 3)
    g = np.repeat(np.arange(7), 3)
    L = _law(N) * np.exp(0.01 * rng.standard_normal(len(N)))
    L[[1, 4]] *= 1.4
    sat = fit_runs(N, L, g, n_boot=0, estimator="huber")["saturating"]
    assert not sat["degenerate"], sat["reason"]
    assert sat["alpha"] == pytest.approx(TRUE["alpha"], abs=0.03)
    assert sat["L_inf"] == pytest.approx(TRUE["L_inf"], rel=0.05)


def test_one_run_per_size_has_no_bootstrap_and_says_why():
    rng = np.random.default_rng(15)
    N, L, g = _sweep(rng, seeds=1)
    fit = fit_runs(N, L, g, n_boot=200)
    assert not fit["bootstrap"]["available"] and "one run per size" in fit["bootstrap"]["reason"]
    assert "alpha_boot_ci" not in fit["power_law"] and fit["band"] is None
    h = headline(fit)
    assert h["interval"] == "analytic" and any("one run per size" in n for n in h["notes"])
    held = holdout_test(N, L, g, "416K", n_boot=200)
    assert held["method"].startswith("Student-t") and held["pi_mean"] is not None


def test_headline_quotes_only_a_supported_bounded_law():
    rng = np.random.default_rng(16)
    N, L, g = _sweep(rng, sd=0.01)
    h = headline(fit_runs(N, L, g, n_boot=300))
    assert h["quote"] and h["law"] == "power_law" and h["excludes_zero"]
    flat = np.repeat([0.05], len(N)) * np.exp(0.03 * rng.standard_normal(len(N)))
    h = headline(fit_runs(N, flat, g, n_boot=300))
    assert not h["excludes_zero"] or not h["quote"]
    # A floor the data need: the saturating law is preferred and, with runs enough, quoted.
    N2 = np.repeat(np.geomspace(1e4, 1e9, 8), 3)
    g2 = np.repeat(np.arange(8), 3)
    L2 = _law(N2) * np.exp(0.01 * rng.standard_normal(len(N2)))
    fit = fit_runs(N2, L2, g2, n_boot=200)
    assert fit["preferred"] == "saturating" and fit["comparison"]["f_p"] < 0.05
    h = headline(fit)
    assert h["law"] == "saturating" and h["quote"] and h["L_inf_ci"][0] < TRUE["L_inf"] < h["L_inf_ci"][1]


def test_lack_of_fit_flags_a_law_the_runs_reject():
    rng = np.random.default_rng(17)
    N, L, g = _sweep(rng, sd=0.003)
    L[g == "85K"] *= 1.1  # a kink no power law follows, far beyond the runs' scatter
    fit = fit_runs(N, L, g, n_boot=200)
    assert fit["comparison"]["lack_of_fit"]["power_law"]["p"] < 1e-3
    h = headline(fit)
    assert not h["quote"] and any("lack-of-fit" in n for n in h["notes"])


def test_fit_study_layout_compute_restates_params_and_holdout():
    rng = np.random.default_rng(18)
    N, L, g = _sweep(rng)
    runs = pd.DataFrame({"size": g, "seed": np.tile([0, 1, 2], 4), "params": N, "flops": 6 * N * TOKENS * 1.1,
                         "tokens_seen": TOKENS, "val_loss": L})
    fit = fit_study(runs, n_boot=200, holdout="416K")
    assert fit["runs_per_size"] == {"42K": 3, "85K": 3, "144K": 3, "416K": 3} and fit["seeds"] == [0, 1, 2]
    assert fit["compute"]["separate_evidence"] is False and "not separate evidence" in fit["compute"]["note"]
    assert not fit["compute"]["bootstrap"]["available"] and fit["params"]["bootstrap"]["available"]
    assert fit["holdout"]["size"] == "416K" and fit["holdout"]["fit"]["n_sizes"] == 3
    json.dumps(fit)  # plain JSON
    table = fit_table(fit)
    assert table["alpha_boot_lo"].notna().sum() >= 1 and (table["n_boot"].dropna() == 200).all()
    assert "not separate evidence" in table_markdown(table)
    varied = runs.assign(tokens_seen=TOKENS * np.repeat([1, 2, 1, 2], 3))
    assert fit_study(varied, n_boot=50)["compute"]["separate_evidence"] is True
    one = fit_study(runs[runs["size"] == "42K"], n_boot=50, holdout="42K")
    assert "error" in one["params"] and "nothing to hold out" in one["holdout"]["reason"]


def test_failed_bootstrap_refits_are_dropped_not_misaligned(monkeypatch):
    """Some resamples' refits fail (NaN rows, as the Huber estimator's do on a run stuck on a
    plateau): the intervals and the band use the others, and the failures are counted."""
    import astropt.scaling as scaling

    real = scaling._refit

    def failing(X, L, Y, law, estimator, starts):
        P = real(X, L, Y, law, estimator, starts)
        P[:25] = np.nan
        return P

    monkeypatch.setattr(scaling, "_refit", failing)
    N, L, g = _sweep(np.random.default_rng(3))
    fit = fit_runs(N, L, g, n_boot=200, seed=0)
    pl = fit["power_law"]
    assert pl["boot_failed"] == 25
    lo, hi = pl["alpha_boot_ci"]
    assert lo < pl["alpha"] < hi
    band = fit["band"]["power_law"]
    assert np.isfinite(band["lo"]).all() and (np.asarray(band["lo"]) < np.asarray(band["hi"])).all()
