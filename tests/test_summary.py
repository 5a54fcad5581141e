"""The summary of headline numbers (astropt.summary) and the pipeline stages around it.

Run: python -m pytest tests/test_summary.py -q
"""

import json
import re

import numpy as np
import pandas as pd
import pytest

from astropt import pipeline
from astropt.figures import downstream_table
from astropt.summary import build_summary, fmt, fmt_count, improving, to_html, to_markdown

SIZES = {"42K": 42_496, "85K": 85_920, "144K": 144_192, "416K": 416_064}
LOSSES = {"42K": 0.0589, "85K": 0.0577, "144K": 0.0518, "416K": 0.0503}


def _sidecars(tmp_path, gpu_hours=None):
    paths = []
    for size, n in SIZES.items():
        d = tmp_path / "models" / size
        d.mkdir(parents=True)
        (d / "ckpt.json").write_text(json.dumps({
            "size": size, "params": n, "final_val_loss": LOSSES[size], "best_val_loss": LOSSES[size] * 0.99,
            "flops": 6.0 * n * 1.2e6, "tokens_seen": 1_209_600, "elapsed_s": 60.0, "gpu_hours": gpu_hours,
        }))
        steps = np.arange(0, 601, 100)
        pd.DataFrame({"step": steps, "tokens_seen": steps * 2016, "flops": 6.0 * n * steps * 2016,
                      "train_loss": 0.2 / (1 + steps / 100), "val_loss": 0.15 / (1 + steps / 120) + LOSSES[size] - 0.15 / 6}
                     ).to_csv(d / "metrics.csv", index=False)
        paths.append(str(d / "ckpt.json"))
    return paths


def _probes():
    """Per-size long probe tables: redshift improves with size, 'noise' gets worse."""
    out = {}
    for i, size in enumerate(SIZES):
        rows = []
        for prop, trend in (("redshift", 1), ("noise", -1)):
            r2 = 0.5 + 0.05 * trend * i
            rows += [
                dict(property=prop, n=1000, protocol="paper", metric="median_abs_error", value=0.4 - 0.02 * trend * i,
                     ci_low=0.38 - 0.02 * trend * i, ci_high=0.42 - 0.02 * trend * i, reason=""),
                dict(property=prop, n=1000, protocol="paper", metric="r2", value=r2, ci_low=r2 - 0.02, ci_high=r2 + 0.02, reason=""),
                dict(property=prop, n=2000, protocol="ridge_cv", metric="r2", value=r2 + 0.1, ci_low=r2 + 0.08, ci_high=r2 + 0.12, reason=""),
                dict(property=prop, n=2000, protocol="ridge_cv", metric="median_abs_error", value=0.3, ci_low=0.29, ci_high=0.31, reason=""),
            ]
        rows.append(dict(property="has_neighbour", n=2000, protocol="logistic_cv", metric="roc_auc", value=0.6 + 0.02 * i,
                         ci_low=0.58, ci_high=0.7, reason=""))
        out[size] = pd.DataFrame(rows)
    return out


def _downstream(probes):
    frames = [df.assign(size=size, params=SIZES[size]) for size, df in probes.items()]
    return downstream_table(pd.concat(frames, ignore_index=True))


FIT = {
    "sizes": list(SIZES), "n_points": 4, "ci_level": 0.95,
    "params": {
        "saturating": {"alpha": 0.31, "alpha_err": 1.1, "alpha_ci": [-13.0, 14.0], "L_inf": 0.041, "L_inf_err": 0.045,
                       "L_inf_ci": [-0.5, 0.6], "degenerate": True, "reason": "1 degree of freedom"},
        "power_law": {"alpha": 0.075, "alpha_err": 0.021, "alpha_ci": [-0.015, 0.165]},
    },
    "compute": {
        "saturating": {"alpha": 0.29, "alpha_err": 0.05, "alpha_ci": [0.1, 0.5], "L_inf": 0.04, "L_inf_err": 0.004,
                       "L_inf_ci": [0.03, 0.05], "degenerate": False, "reason": ""},
        "power_law": {"alpha": 0.074, "alpha_err": 0.02, "alpha_ci": [-0.01, 0.16]},
    },
}


def test_improving_counts_the_better_direction():
    down = _downstream(_probes())
    assert improving(down, "ridge_cv", "r2") == (1, 2, 0.0)  # redshift rho +1, noise rho -1
    up, n, med = improving(down, "paper", "median_abs_error")  # lower is better: rho -1 is improving
    assert (up, n) == (1, 2) and med == 0.0
    assert improving(down, "logistic_cv", "roc_auc")[:2] == (1, 1)
    up, n, med = improving(down, "ridge_cv", "accuracy")  # not in the table
    assert (up, n) == (0, 0) and np.isnan(med)


def test_summary_numbers_come_from_the_inputs(tmp_path):
    losses = pipeline.load_sidecars(_sidecars(tmp_path))
    probes = _probes()
    text = to_markdown(build_summary(losses, FIT, probes, _downstream(probes), context={"data": "Data: test."}))
    assert "0.0589 (42K) to 0.0503 (416K)" in text
    assert "ridge R²: 1 of 2 properties improve" in text
    assert "plain power law alpha = 0.075 ± 0.021" in text
    assert "not constrained by these points: degenerate" in text  # the degenerate fit vs N is no headline
    assert "saturating alpha = 0.29 ± 0.05" in text  # the one vs compute is
    assert "Best-predicted properties (416K, ridge R²): redshift 0.75, noise 0.45" in text
    assert "0.75 [0.73, 0.77]" in text  # the largest model's score with its interval
    assert "wall-clock hours (no GPU)" in text
    assert "`results/scaling/fit.json` (rule `scaling`)" in text
    # Every table is well formed: same number of cells in each row as in its header.
    for table in re.findall(r"((?:^\|.*\|\n)+)", text, flags=re.M):
        widths = {line.count(" | ") for line in table.strip().splitlines() if not line.startswith("|--")}
        assert len(widths) == 1, table


def test_summary_html_is_escaped_and_complete(tmp_path):
    losses = pipeline.load_sidecars(_sidecars(tmp_path, gpu_hours=0.5))
    probes = _probes()
    probes["416K"].loc[0, "property"] = "a<b"
    page = to_html(build_summary(losses, FIT, probes, _downstream(probes)))
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "a&lt;b" in page and "a<b" not in page
    assert "<code>results/scaling/fit.json</code>" in page
    assert "2 GPU-hours" in page  # 4 sizes x 0.5


def test_summary_needs_the_largest_models_probes(tmp_path):
    losses = pipeline.load_sidecars(_sidecars(tmp_path))
    probes = _probes()
    del probes["416K"]
    with pytest.raises(ValueError, match="416K"):
        build_summary(losses, FIT, probes, _downstream(_probes()))


def test_a_saturating_fit_with_an_interval_at_its_bounds_is_not_a_headline(tmp_path):
    losses = pipeline.load_sidecars(_sidecars(tmp_path))
    probes = _probes()
    fit = json.loads(json.dumps(FIT))
    fit["compute"]["saturating"]["ci_open"] = {"alpha": [True, True]}
    text = to_markdown(build_summary(losses, fit, probes, _downstream(probes)))
    assert "saturating alpha" not in text
    assert "Loss vs compute: plain power law alpha = 0.074 ± 0.02 (the saturating law is not constrained" in text


def test_released_weights_have_no_recorded_cost(tmp_path):
    paths = _sidecars(tmp_path)
    for p in paths:  # as astropt.released writes them
        d = json.loads(open(p).read())
        d["elapsed_s"] = d["gpu_hours"] = None
        open(p, "w").write(json.dumps(d))
    probes = _probes()
    text = to_markdown(build_summary(pipeline.load_sidecars(paths), FIT, probes, _downstream(probes)))
    assert "its cost not recorded (released weights)" in text
    assert "| 416K | 416,064 | 1.21M | 3T | 0.0503 | 0.0498 | - | n/a |" in text


def test_formats():
    assert fmt(None) == fmt(float("nan")) == "n/a"
    assert fmt(0.0502812, 4) == "0.05028"
    assert fmt_count(416_064) == "416K" and fmt_count(3.28e12) == "3.28T"


def test_pipeline_summary_writes_both_files(tmp_path):
    sidecars = _sidecars(tmp_path)
    probes = _probes()
    paths = []
    for size, df in probes.items():
        paths.append(tmp_path / f"{size}.csv")
        df.to_csv(paths[-1], index=False)
    _downstream(probes).to_csv(tmp_path / "summary.csv", index=False)
    (tmp_path / "fit.json").write_text(json.dumps(FIT))
    config = {"sizes": list(SIZES), "data": {"source": "synthetic", "image_size": 64}, "tokens": {"patch_size": 8},
              "train": {"steps": 600}, "embed": {"split": "test", "n_tokens": 64, "layer": -1, "pooling": "mean"}}
    pipeline.summary(sidecars, tmp_path / "fit.json", paths, tmp_path / "summary.csv", tmp_path / "s.md",
                     tmp_path / "s.html", config, log=lambda *a: None)
    md = (tmp_path / "s.md").read_text()
    assert md.startswith("# AstroPT scaling study") and "trained here for 600 steps each" in md
    assert "<table>" in (tmp_path / "s.html").read_text()


def test_loss_curves_in_size_order(tmp_path):
    sidecars = _sidecars(tmp_path)
    metrics = [p.replace("ckpt.json", "metrics.csv") for p in reversed(sidecars)]
    lines = []
    pipeline.figure_loss_curves(metrics, sidecars, tmp_path / "curves.png", log=lines.append)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert lines == [f"wrote {tmp_path / 'curves.png'}: loss curves of 42K, 85K, 144K, 416K"]


def test_umap_panels_default_to_the_papers_properties(tmp_path):
    columns = ["id", "redshift", "g_r", "mag_abs_g_photoz", "axis_ratio"]
    panels, lacking = pipeline.umap_properties("paper", columns, None)
    assert list(panels) == ["mag_abs_g_photoz", "g_r", "redshift"]  # the paper's order
    assert panels["g_r"] == "g - r\n(g_r)" and panels["redshift"] == "redshift"
    assert "ssfr_med_photoz" in lacking and len(lacking) == 9
    pd.DataFrame({"property": ["axis_ratio", "redshift"]}).to_csv(tmp_path / "p.csv", index=False)
    for probed in ("probed", None):
        assert list(pipeline.umap_properties(probed, columns, tmp_path / "p.csv")[0]) == ["axis_ratio", "redshift"]
    with pytest.raises(ValueError, match="umap.properties.*'mass'"):
        pipeline.umap_properties(["mass"], columns, None)
    with pytest.raises(ValueError, match="none of the paper's"):
        pipeline.umap_properties("paper", ["id", "x"], None)


def test_one_size_tables_spell_out_each_reason_once(tmp_path):
    sidecars = _sidecars(tmp_path)[:1]
    out = {k: tmp_path / f"fit.{k}" for k in ("json", "md", "tex", "csv")}
    pipeline.scaling(sidecars, out["json"], tmp_path / "losses.csv", out["md"], out["tex"], out["csv"], log=lambda *a: None)
    fit = json.loads(out["json"].read_text())
    csv = pd.read_csv(out["csv"])
    assert csv["note"].str.contains("at least two sizes").all()  # the report shows the reason itself
    probes = {"42K": _probes()["42K"]}
    text = to_markdown(build_summary(pipeline.load_sidecars(sidecars), fit, probes, _downstream(probes),
                                     fit_table=pipeline._fit_table(fit)))
    assert text.count("(1) no fit: a scaling fit needs at least two sizes") == 1 and "(2)" not in text
    assert "one size: no scaling fit" in text
