"""The Snakemake workflow: the DAG resolves, bad configs stop early, a micro run completes.

Run: python -m pytest tests/test_workflow.py -q          (the micro run is marked slow)
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args, cwd=ROOT, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)


def _jobs(dry_run_stdout: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run."""
    counts, in_table = {}, False
    for line in dry_run_stdout.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table and len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
        elif in_table and counts and not parts:
            break
    return counts


def test_default_all_dry_run():
    proc = snakemake("-n", "--cores", "2", "all")
    assert proc.returncode == 0, proc.stderr
    jobs = _jobs(proc.stdout)
    assert jobs["train"] == 4 and jobs["embed"] == 4 and jobs["probe"] == 4
    assert jobs["tokenise"] == 3 and jobs["download"] == 1 and jobs["figure_umap"] == 2


def test_paper_single_target_dry_run_on_slurm_profile():
    proc = snakemake("-n", "--profile", "profiles/slurm", "--configfile=config/paper.yaml", "results/probes/309M.csv")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = _jobs(proc.stdout)
    # download, tokenise train + validation (training) and test (embedding), train, embed, probe
    assert jobs == {"download": 1, "tokenise": 3, "train": 1, "embed": 1, "probe": 1, "total": 7}
    assert "results/models/309M/ckpt.pt" in proc.stdout


def test_bad_config_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sizes: [42K, 3M]\ntrain: {steps: many}\n")
    proc = snakemake("-n", "--cores", "1", "--configfile", str(bad))
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "'sizes[1]'" in out or "'train.steps'" in out, out
    assert "train.steps" in out


@pytest.mark.slow
def test_micro_workflow_end_to_end(tmp_path):
    """The whole DAG on a micro config, in a scratch copy of the workflow."""
    work = tmp_path / "wf"
    work.mkdir()
    for item in ("Snakefile", "workflow", "config"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / item)
    proc = snakemake("--cores", "2", f"--configfile={ROOT / 'tests/data/micro.yaml'}", "all", cwd=work, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    for size in ("30K", "144K"):
        metrics = pd.read_csv(work / f"results/models/{size}/metrics.csv")
        assert metrics["step"].iloc[-1] == 30
        emb = pd.read_parquet(work / f"results/embeddings/{size}.parquet")
        assert len(emb) == 256 and emb["id"].is_unique
        probes = pd.read_csv(work / f"results/probes/{size}.csv")
        assert {"mag_r_desi", "est_petro_th50", "redshift"} <= set(probes["property"])
    fit = json.loads((work / "results/scaling/fit.json").read_text())
    assert fit["n_points"] == 2 and fit["sizes"] == ["30K", "144K"]
    for fig in ("scaling.png", "downstream.png", "umap_144K.png"):
        assert (work / "results/figures" / fig).stat().st_size > 10_000
    assert not (work / "results/figures/umap_30K.png").exists()
    for split in ("train", "validation", "test"):
        assert (work / f"results/tokens/{split}/tokens.npy").exists()
    assert "unreadable" in (work / "logs/tokenise/train.log").read_text()
    assert (work / "resources/galaxies/metadata.parquet").exists()
