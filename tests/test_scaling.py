"""Tests of the scaling-law fits (astropt.scaling).

Run: python -m pytest tests/test_scaling.py -q
"""

import json
import math

import numpy as np
import pytest

from astropt.scaling import (
    fit_power_law,
    fit_saturating_power_law,
    predict,
    predict_power_law,
    to_jsonable,
)

N = np.logspace(4, 9, 8)
TRUE = {"L_inf": 0.15, "N_c": 1e3, "alpha": 0.3}  # reducible part 77% -> 10% of L


def _law(N, L_inf=TRUE["L_inf"], N_c=TRUE["N_c"], alpha=TRUE["alpha"]):
    return L_inf + (N_c / N) ** alpha


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


def test_noiseless_saturating_fit_is_exact():
    fit = fit_saturating_power_law(N, _law(N))
    sat = fit["saturating"]
    assert sat["alpha"] == pytest.approx(0.3, rel=1e-5)
    assert sat["L_inf"] == pytest.approx(0.15, rel=1e-5)
    assert sat["log10_N_c"] == pytest.approx(3.0, abs=1e-4)
    assert predict(fit, N) == pytest.approx(_law(N), rel=1e-6)


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


def test_log_log_errors_match_scatter():
    rng = np.random.default_rng(0)
    alphas = [
        fit_power_law(N, (1e3 / N) ** 0.3 * np.exp(0.02 * rng.standard_normal(len(N))))
        for _ in range(200)
    ]
    spread = np.std([a["alpha"] for a in alphas])
    mean_err = np.mean([a["alpha_err"] for a in alphas])
    assert mean_err == pytest.approx(spread, rel=0.3)


def test_three_points_are_flagged_degenerate_not_crashed():
    fit = fit_saturating_power_law(N[:3], _law(N[:3]))
    sat = fit["saturating"]
    assert sat["degenerate"] is True
    assert "3 points" in sat["reason"]
    assert sat["alpha_err"] is None  # NaN written as None
    assert fit["power_law"]["alpha"] > 0
    two = fit_saturating_power_law(N[:2], _law(N[:2]))
    assert two["saturating"]["degenerate"] and two["saturating"]["alpha"] is None
    assert two["power_law"]["alpha_err"] is None
    assert np.isnan(predict(two, N)).all()
    assert np.isfinite(predict(two, N, law="power_law")).all()


def test_parameters_at_bounds_are_flagged():
    # A step then a flat floor: L_inf collapses onto the best loss, alpha runs to its bound.
    sat = fit_saturating_power_law(N[:5], [0.30, 0.18, 0.18, 0.18, 0.18])["saturating"]
    assert sat["degenerate"] and "upper bound (the smallest observed loss)" in sat["reason"]
    assert sat["L_inf"] < 0.18
    # Loss falling faster than a power law: no floor, L_inf at 0.
    sat = fit_saturating_power_law(N[:5], [0.20, 0.195, 0.185, 0.17, 0.15])["saturating"]
    assert sat["degenerate"] and "lower bound 0" in sat["reason"]


def test_result_is_json_serialisable_and_round_trips():
    rng = np.random.default_rng(0)
    fit = fit_saturating_power_law(N, _law(N) * (1 + 0.01 * rng.standard_normal(len(N))))
    back = json.loads(json.dumps(fit, allow_nan=False))
    assert back == fit
    assert set(back) >= {"model", "n_points", "saturating", "power_law", "data"}
    assert back["n_points"] == 8 and len(back["data"]["N"]) == 8
    assert predict(back, [1e5, 1e6]) == pytest.approx(predict(fit, [1e5, 1e6]))
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


def test_predict_rejects_unknown_law():
    fit = fit_saturating_power_law(N, _law(N))
    with pytest.raises(ValueError, match="law must be"):
        predict(fit, N, law="linear")
    with pytest.raises(ValueError, match="not the 'power_law' law"):
        predict(fit["saturating"], N, law="power_law")
