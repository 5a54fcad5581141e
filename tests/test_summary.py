"""The summary of headline numbers (astropt.summary) and the stages around it (runs, fits, figures).

Run: python -m pytest tests/test_summary.py -q
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from astropt.figures import figure_loss_curves, umap_properties
from astropt.probe import downstream_table
from astropt.runs import load_sidecars, run_budget, run_name
from astropt.scaling import fit_study, write_fits
from astropt.summary import _fit_table, build_summary, clipped, fmt, fmt_count, headline_lines, improving, to_html, to_markdown, write_summary

SIZES = {"42K": 42_496, "85K": 85_920, "144K": 144_192, "416K": 416_064}
LOSSES = {size: 0.0661 * (n / 42_496) ** -0.1 for size, n in SIZES.items()}  # a power law: means of 3 runs
SEEDS = (0, 1, 2)
PROVENANCE = {"seed": 0, "data_seed": 0, "threads": 1, "torch": "2.13.0+cpu", "cpu_capability": "AVX2",
              "cpu": "a test CPU", "gpu": None, "host": "ci"}


def _sidecars(tmp_path, gpu_hours=None, seeds=SEEDS, sizes=SIZES):
    paths = []
    for size, n in sizes.items():
        for seed in seeds:
            d = tmp_path / "models" / size / f"seed{seed}"
            d.mkdir(parents=True)
            loss = LOSSES[size] * (1 + 0.02 * (seed - 1))
            (d / "ckpt.json").write_text(json.dumps({
                "size": size, "params": n, "final_val_loss": loss, "best_val_loss": loss * 0.99,
                "flops": 6.0 * n * 1.2e6, "tokens_seen": 1_209_600, "elapsed_s": 60.0, "gpu_hours": gpu_hours,
                "seed": seed, "provenance": {**PROVENANCE, "seed": seed},
                "steps": 600, "model_args": {}, "lr": 1e-3, "train": {},
            }))
            steps = np.arange(0, 601, 100)
            pd.DataFrame({"step": steps, "tokens_seen": steps * 2016, "flops": 6.0 * n * steps * 2016,
                          "train_loss": 0.2 / (1 + steps / 100), "val_loss": 0.15 / (1 + steps / 120) + loss - 0.15 / 6}
                         ).to_csv(d / "metrics.csv", index=False)
            paths.append(str(d / "ckpt.json"))
    return paths


def _run_probes(seeds=SEEDS):
    """Per-run long probe tables: redshift improves with size, 'noise' gets worse; the paper
    protocol clips 30 % of 'noise' (counts as astropt.probe writes them)."""
    out = {}
    for i, size in enumerate(SIZES):
        for seed in seeds:
            jitter = 0.005 * (seed - 1)
            rows = []
            for prop, trend in (("redshift", 1), ("noise", -1)):
                r2 = 0.5 + 0.05 * trend * i + jitter
                clip = 600 if prop == "noise" else 20
                kept = dict(n_total=2000, n_missing=0)
                rows += [
                    dict(property=prop, protocol="paper", metric="median_abs_error", value=0.4 - 0.02 * trend * i,
                         ci_low=0.38 - 0.02 * trend * i, ci_high=0.42 - 0.02 * trend * i, n=2000 - clip,
                         n_clipped=clip, reason="", **kept),
                    dict(property=prop, protocol="paper", metric="r2", value=r2, ci_low=r2 - 0.02, ci_high=r2 + 0.02,
                         n=2000 - clip, n_clipped=clip, reason="", **kept),
                    dict(property=prop, protocol="ridge_cv", metric="r2", value=r2 + 0.1, ci_low=r2 + 0.08,
                         ci_high=r2 + 0.12, n=2000, n_clipped=0, reason="", **kept),
                    dict(property=prop, protocol="ridge_cv", metric="median_abs_error", value=0.3, ci_low=0.29,
                         ci_high=0.31, n=2000, n_clipped=0, reason="", **kept),
                ]
            rows.append(dict(property="has_neighbour", protocol="logistic_cv", metric="roc_auc", value=0.6 + 0.02 * i,
                             ci_low=0.58, ci_high=0.7, n=2000, n_total=2000, n_missing=0, n_clipped=0, reason=""))
            out[(size, seed)] = pd.DataFrame(rows)
    return out


def _aggregated(runs):
    """Per size, the aggregate table's columns (as astropt.probe.aggregate_runs writes them)."""
    out = {}
    for size in dict.fromkeys(s for s, _ in runs):
        tables = [t for (s, _), t in runs.items() if s == size]
        base = tables[0].copy()
        values = np.column_stack([t["value"] for t in tables])
        sd = values.std(axis=1, ddof=1) if len(tables) > 1 else np.nan
        base["value"], base["run_sd"], base["n_runs"] = values.mean(axis=1), sd, len(tables)
        out[size] = base
    return out


def _downstream(runs):
    frames = [df.assign(size=size, params=SIZES[size], seed=seed) for (size, seed), df in runs.items()]
    return downstream_table(pd.concat(frames, ignore_index=True))


def _fit(losses, n_boot=200):
    return fit_study(losses, n_boot=n_boot, holdout="416K")


def _inputs(tmp_path, **kw):
    losses = load_sidecars(_sidecars(tmp_path, **kw))
    runs = _run_probes()
    return losses, _fit(losses), _aggregated(runs), _downstream(runs)


def test_improving_counts_the_better_direction():
    down = _downstream(_run_probes())
    assert improving(down, "ridge_cv", "r2") == (1, 2, 0.0)  # redshift rho +1, noise rho -1
    red = down[(down["property"] == "redshift") & (down["metric"] == "r2")]
    assert set(red["seeds_agree"]) == {1.0} and set(red["seeds_rho"]) == {"+1.00;+1.00;+1.00"}


def test_summary_numbers_come_from_the_inputs(tmp_path):
    losses, fit, probes, down = _inputs(tmp_path)
    text = to_markdown(build_summary(losses, fit, probes, down))
    assert "4 sizes x 3 training seeds (0, 1, 2)" in text and "threads 1" in text and "CPU kernels AVX2" in text
    assert "Final validation loss (mean ± sd of runs): 0.0661 ± 0.0013 (42K) to 0.05262 ± 0.0011 (416K)" in text
    alpha = fit["params"]["power_law"]
    lo, hi = alpha["alpha_boot_ci"]
    assert f"alpha = {fmt(alpha['alpha'])} [{fmt(lo)}, {fmt(hi)}] (95 % bootstrap interval over 12 runs of 4 sizes" in text
    assert "Loss vs compute: every run saw the same" in text and "not separate evidence" in text
    assert f"Held-out size: {fit['holdout']['verdict']}." in text
    assert "ridge R²: 1 of 2 properties improve with model size" in text
    assert "The paper protocol's MAD clip drops 30% of the galaxies with a finite noise" in text
    assert "redshift" not in " ".join(line for line in headline_lines(text) if "MAD clip" in line)
    assert "| 42K/seed1 | 0.0661 | 1 | 1 | AVX2 | 2.13.0+cpu |" in text  # every run named
    assert "1,400 of 2,000 (600 clipped)" in text  # kept / dropped, per property
    assert "Training compute: " in text and "(12 runs)" in text


def test_an_unbounded_or_unsupported_law_is_not_a_headline(tmp_path):
    losses, fit, probes, down = _inputs(tmp_path)
    fit = json.loads(json.dumps(fit))
    fit["params"]["power_law"]["boot_open"]["alpha"] = [False, True]
    text = to_markdown(build_summary(losses, fit, probes, down))
    assert "Loss vs parameters: no law is quoted: " in text and "is not bounded by the data" in text
    assert "is not a result" in text
    fit["params"]["power_law"]["boot_open"]["alpha"] = [False, False]
    fit["params"]["power_law"]["alpha_boot_ci"] = [-0.01, 0.2]
    text = to_markdown(build_summary(losses, fit, probes, down))
    assert "the data cannot tell whether the loss falls with size" in text


def test_one_run_per_size_says_the_variance_is_unseen(tmp_path):
    losses = load_sidecars(_sidecars(tmp_path, seeds=(0,)))
    runs = _run_probes(seeds=(0,))
    text = to_markdown(build_summary(losses, _fit(losses), _aggregated(runs), _downstream(runs)))
    assert "one run per size: run-to-run variance not seen" in text
    assert "mean ± sd" not in text


def test_summary_html_is_escaped_and_complete(tmp_path):
    losses, fit, probes, down = _inputs(tmp_path, gpu_hours=0.5)
    page = to_html(build_summary(losses, fit, probes, down, context={"d": "Data: <b>x</b>"}))
    assert page.startswith("<!doctype html>") and "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert "<table>" in page and "6 GPU-hours" in page


def test_summary_needs_the_largest_models_probes(tmp_path):
    losses, fit, probes, down = _inputs(tmp_path)
    del probes["416K"]
    with pytest.raises(ValueError, match="416K"):
        build_summary(losses, fit, probes, down)


def test_released_weights_have_no_recorded_cost(tmp_path):
    paths = _sidecars(tmp_path, seeds=(0,))
    for p in map(Path, paths):  # as astropt.released writes them
        d = json.loads(p.read_text())
        d["elapsed_s"] = d["gpu_hours"] = None
        d.pop("provenance")
        p.write_text(json.dumps(d))
    losses = load_sidecars(paths)
    runs = _run_probes(seeds=(0,))
    text = to_markdown(build_summary(losses, _fit(losses), _aggregated(runs), _downstream(runs)))
    assert "its cost not recorded (released weights)" in text
    row = next(line for line in text.splitlines() if line.startswith("| 416K | 416,064 | 1 | 1.21M | 3T |"))
    assert row.endswith("| - | n/a |")  # no GPU-hours, no wall time recorded


def test_formats_and_headline_lines():
    assert fmt(None) == fmt(float("nan")) == "n/a"
    assert fmt(0.0502812, 4) == "0.05028"
    assert fmt_count(416_064) == "416K" and fmt_count(3.28e12) == "3.28T"
    assert headline_lines("# T\n\ntext\n\n- one\n- two\n\n## next\n- three\n") == ["one", "two"]


def test_clip_flags_come_from_the_counts():
    probes = _aggregated(_run_probes())
    assert clipped(probes) == [("noise", "paper", 0.3)]
    assert clipped(probes, share=0.5) == []


def test_summary_stage_and_make_runs_headline(tmp_path, capsys):
    sidecars = _sidecars(tmp_path)
    losses = load_sidecars(sidecars)
    paths = []
    for size, df in _aggregated(_run_probes()).items():
        paths.append(tmp_path / f"{size}.csv")
        df.to_csv(paths[-1], index=False)
    _downstream(_run_probes()).to_csv(tmp_path / "summary.csv", index=False)
    (tmp_path / "fit.json").write_text(json.dumps(_fit(losses)))
    config = {"sizes": list(SIZES), "seed": 0, "data": {"source": "synthetic", "image_size": 64},
              "tokens": {"patch_size": 8}, "train": {"steps": 600, "seeds": list(SEEDS)},
              "embed": {"split": "test", "n_tokens": 64, "layer": -1, "pooling": "mean"}}
    write_summary(sidecars, tmp_path / "fit.json", paths, tmp_path / "summary.csv", tmp_path / "s.md",
                     tmp_path / "s.html", config, log=lambda *a: None)
    md = (tmp_path / "s.md").read_text()
    assert md.startswith("# AstroPT scaling study") and "trained here for 600 steps each, once per training seed" in md
    assert "<table>" in (tmp_path / "s.html").read_text()
    from astropt.summary import main

    assert main([str(tmp_path / "s.md")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("Headline numbers") and printed[1].startswith("- Runs: 4 sizes x 3 training seeds")
    assert any(line.startswith("- Held-out size:") for line in printed)
    assert main([str(tmp_path / "missing.md")]) == 1


def test_loss_curves_in_run_order(tmp_path):
    sidecars = _sidecars(tmp_path)
    metrics = [p.replace("ckpt.json", "metrics.csv") for p in reversed(sidecars)]
    lines = []
    figure_loss_curves(metrics, sidecars, tmp_path / "curves.png", log=lines.append)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    order = [f"{s}/seed{k}" for s in SIZES for k in SEEDS]
    assert lines == [f"wrote {tmp_path / 'curves.png'}: loss curves of 12 runs ({', '.join(order)})"]


def test_umap_panels_default_to_the_papers_properties(tmp_path):
    columns = ["id", "redshift", "g_r", "mag_abs_g_photoz", "axis_ratio"]
    panels, lacking = umap_properties("paper", columns, None)
    assert list(panels) == ["mag_abs_g_photoz", "g_r", "redshift"]  # the paper's order
    assert panels["g_r"] == "g - r\n(g_r)" and panels["redshift"] == "redshift"
    assert "ssfr_med_photoz" in lacking and len(lacking) == 9
    pd.DataFrame({"property": ["axis_ratio", "redshift"]}).to_csv(tmp_path / "p.csv", index=False)
    for probed in ("probed", None):
        assert list(umap_properties(probed, columns, tmp_path / "p.csv")[0]) == ["axis_ratio", "redshift"]
    with pytest.raises(ValueError, match="umap.properties.*'mass'"):
        umap_properties(["mass"], columns, None)
    with pytest.raises(ValueError, match="none of the paper's"):
        umap_properties("paper", ["id", "x"], None)


def test_one_size_tables_spell_out_each_reason_once(tmp_path):
    sidecars = _sidecars(tmp_path, sizes={"42K": SIZES["42K"]})
    out = {k: tmp_path / f"fit.{k}" for k in ("json", "md", "tex", "csv")}
    write_fits(sidecars, out["json"], tmp_path / "losses.csv", out["md"], out["tex"], out["csv"],
                     scaling_cfg={"n_boot": 50}, holdout="42K", log=lambda *a: None)
    fit = json.loads(out["json"].read_text())
    csv = pd.read_csv(out["csv"])
    assert csv["note"].str.contains("at least two sizes").all()  # the report shows the reason itself
    assert len(pd.read_csv(tmp_path / "losses.csv")) == 3  # one row per run
    runs = {k: v for k, v in _run_probes().items() if k[0] == "42K"}
    text = to_markdown(build_summary(load_sidecars(sidecars), fit, _aggregated(runs) | {}, _downstream(runs),
                                     fit_table=_fit_table(fit)))
    assert text.count("(1) no fit: a scaling fit needs at least two sizes") == 1 and "(2)" not in text
    assert "one size: no scaling fit" in text and "No test: one size: nothing to hold out" in text


def test_run_names_come_from_paths():
    assert run_name("results/models/416K/seed2/ckpt.json") == ("416K", 2)
    assert run_name("results/models/416K/D1.61M/seed2/ckpt.json") == ("416K", 2)  # another token budget
    assert run_budget("results/models/416K/D1.61M/seed2/ckpt.json") == "D1.61M"
    assert run_budget("results/models/416K/seed2/ckpt.json") == ""
    assert run_name("results/probes/85K/seed10.draws.parquet") == ("85K", 10)
    with pytest.raises(ValueError, match="not a run's file"):
        run_name("results/probes/85K.csv")


def test_losses_and_cost_of_a_grid(tmp_path):
    """Runs of two budgets: the fit over N sees the default budget's runs only; losses.csv and
    the cost table (fit.json "cost", fit.md) every run, by cell."""
    paths = _sidecars(tmp_path)
    for p in list(paths):  # the same runs again at half the tokens, in D605K/
        d = json.loads(Path(p).read_text())
        half = Path(p).parent.parent / "D605K" / Path(p).parent.name
        half.mkdir(parents=True)
        d.update(tokens_seen=604_800, flops=d["flops"] / 2, elapsed_s=30.0, final_val_loss=d["final_val_loss"] * 1.1)
        (half / "ckpt.json").write_text(json.dumps(d))
        paths.append(str(half / "ckpt.json"))
    losses = load_sidecars(paths)
    assert len(losses) == 24 and losses["default_budget"].sum() == 12
    assert set(losses["budget"]) == {"D605K", "D1.21M"}
    from astropt.compute import compute_table
    from astropt.tables import compute_markdown

    cost = compute_table(losses)
    assert len(cost) == 8 and [r["budget"] for r in cost[:2]] == ["D605K", "D1.21M"]
    first = cost[0]
    assert first["runs"] == 3 and first["C_6ND"] == 6.0 * first["N"] * 604_800
    assert abs(first["wall_h"] - 30 / 3600) < 1e-12 and first["gpu_hours"] is None
    assert abs(first["flops_per_s"] - first["flops"] / 30) < 1e-6 * first["flops_per_s"]
    md = compute_markdown(cost)
    assert "Total: 24 runs" in md and md.count("\n| ") == 9  # header + 8 cells


def test_grid_paragraph_says_what_the_grid_cannot_tell():
    from astropt.summary import _grid_paragraph

    text = _grid_paragraph({
        "approach3": {"n_runs": 24, "a": 0.32, "a_ci": [0.04, 1.0], "b": 0.68, "b_ci": [0.0, 0.96]},
        "isoflop": {"a": None, "reason": "0 of 5 compute levels have a minimum inside the sizes"},
        "holdout": {"verdict": "inside the 95 % prediction interval"},
    })
    assert "a = 0.32 [0.04, 1] (an end at the exponent's limit" in text
    assert "approach 2 (IsoFLOP profiles): a = not identified (0 of 5 compute levels" in text
    assert "Held-out corner: inside the 95 % prediction interval." in text
    one = _grid_paragraph({"approach3": {"n_runs": 6, "a": None, "b": None,
                                         "unidentified": {"a": "the grid has one token budget"}}})
    assert "a = not identified (the grid has one token budget)" in one and "Held-out corner" not in one
