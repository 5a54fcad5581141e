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


def snakemake(*args, cwd=ROOT, timeout=600, env=None):
    env = {**(env or os.environ), "PYTHONPATH": str(ROOT)}
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)


def torch_cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def _scratch_workflow(tmp_path: Path) -> Path:
    """A copy of the workflow to run in (results land there, not in the repo)."""
    work = tmp_path / "wf"
    work.mkdir()
    for item in ("Snakefile", "workflow", "config", "environment.yml"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / item)
    return work


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
    proc = snakemake("-n", "--forceall", "--cores", "2", "all")  # --forceall: also after `make run`
    assert proc.returncode == 0, proc.stderr
    jobs = _jobs(proc.stdout)
    # 4 sizes x 3 training seeds: a job per run, then one probe table per size over its runs
    assert jobs["train"] == 12 and jobs["embed"] == 12 and jobs["probe"] == 12 and jobs["probe_size"] == 4
    assert jobs["tokenise"] == 3 and jobs["token_index"] == 3 and jobs["download"] == 1 and jobs["figure_umap"] == 1
    assert jobs["rejected"] == 1 and jobs["scaling"] == 1


def test_paper_single_target_dry_run_on_slurm_profile():
    proc = snakemake("-n", "--forceall", "--profile", "profiles/slurm", "--configfile=config/paper.yaml", "results/probes/309M.csv")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = _jobs(proc.stdout)
    # download; tokenise train (32 jobs, one per shard group) + validation (training) and test
    # (embedding), one job each, and their indexes; train, embed, probe (one run: paper.yaml
    # trains one seed) and the size's table over its runs
    assert jobs == {"download": 1, "tokenise": 34, "token_index": 3, "train": 1, "embed": 1, "probe": 1,
                    "probe_size": 1, "total": 42}
    assert "results/models/309M/seed0/ckpt.pt" in proc.stdout
    # the whole sweep's cost before anything runs: 8 sizes x 1 seed
    assert "Training plan: 8 runs (8 sizes x 1 seed)" in proc.stderr and "GPU-hours" in proc.stderr


@pytest.mark.skipif(torch_cuda_visible(), reason="with a GPU visible the run may go ahead")
def test_size_outside_the_config_is_costed_and_refused_on_cpu():
    """The default config, a paper size as target, no GPU: a warning with the cost, then a
    refusal before any job (the estimate is hours on one thread) that names the way out."""
    proc = snakemake("-n", "--forceall", "--cores", "2", "results/probes/309M.csv")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "size 309M is not in this config's sizes" in out and "FLOPs" in out
    assert "--configfile=config/paper.yaml" in out and "train.max_cpu_hours" in out
    ok = snakemake("-n", "--forceall", "--cores", "2", "results/probes/309M.csv",
                   "--config", "train={max_cpu_hours: null}")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "size 309M is not in this config's sizes" in ok.stderr
    assert _jobs(ok.stdout)["train"] == 3  # the default's three seeds


def test_size_outside_the_config_that_cannot_fit_its_gpus_is_refused():
    """config/paper.yaml declares 80 GB GPUs: the 6.5B preset asked for as a target, on the
    default's one GPU under DDP, is refused before any job, naming FSDP; with FSDP, activation
    checkpointing and 16 GPUs its training job is planned, with the sharded spec."""
    target = "results/models/6.5B/seed0/ckpt.pt"
    proc = snakemake("-n", "--forceall", "--configfile=config/paper.yaml", target)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "size 6.5B needs about 201.0 GB" in out and "parallel: fsdp" in out
    ok = snakemake("-n", "--forceall", "-p", "--configfile=config/paper.yaml", target, "--config",
                   "train={sizes: {6.5B: {micro_batch: 10, grad_accum: 32, parallel: fsdp, activation_checkpointing: true}}}",
                   "resources={train: {sizes: {6.5B: {nodes: 2, gpus: 8, cpus: 64, mem_mb: 512000}}}}")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert '"parallel": "fsdp"' in ok.stdout and '"activation_checkpointing": true' in ok.stdout


def test_paper_2100M_is_one_job_on_two_nodes():
    """Multi-node: one srun task per node running astropt.launch; SLURM gets the nodes,
    one task each and 8 GPUs per node."""
    proc = snakemake("-n", "--forceall", "--profile", "profiles/slurm", "--configfile=config/paper.yaml",
                     "-p", "results/models/2100M/seed0/ckpt.pt")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "exec srun --ntasks=2 --ntasks-per-node=1 --kill-on-bad-exit=1 " in out
    assert "-m astropt.launch --nnodes=2 --nproc-per-node=8 -- -m astropt.train" in out
    train = out[out.index("rule train:"):]
    for res in ("gpu=0", "gres=gpu:8", "nodes=2", "tasks=2", "mpi=srun", "runtime=1440", "slurm_extra=--signal=USR1@600"):
        assert res in train.split("resources:")[1].split("\n")[0], res
    assert '"grad_accum": 32' in out and '"micro_batch": 10' in out


def test_grid_dry_run_has_a_job_per_size_budget_and_seed():
    """config/grid.yaml: 4 sizes x 3 token budgets x 2 seeds, each its own training job with the
    budget's steps, addressable by path; the probes use the default budget's runs only; the
    whole grid's cost is printed before anything runs."""
    proc = snakemake("-n", "--forceall", "--cores", "2", "--configfile=config/grid.yaml", "-p", "all")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = _jobs(proc.stdout)
    assert jobs["train"] == 24 and jobs["embed"] == 8 and jobs["probe"] == 8 and jobs["figure_grid"] == 1
    assert "Training plan: 24 runs (4 sizes x 3 token budgets x 2 seeds)" in proc.stderr
    out = proc.stdout
    for path, steps in (("42K/D202K/seed1", 200), ("217K/D403K/seed0", 400), ("144K/seed1", 800)):
        cmd = next(line for line in out.splitlines() if f"--out-dir results/models/{path} " in line)
        assert f'"steps": {steps},' in cmd, (path, cmd[:400])
    assert "results/embeddings/42K/D202K" not in out and "results/figures/isoflop.png" in out


def test_bad_config_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sizes: [42K, 3M]\ntrain: {steps: many}\n")
    proc = snakemake("-n", "--cores", "1", "--configfile", str(bad))
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "'sizes[1]'" in out or "'train.steps'" in out, out
    assert "train.steps" in out


def test_missing_folder_source_stops_the_dry_run(tmp_path):
    """A folder source whose stamps or catalogue are not there: the dry run names the key."""
    proc = snakemake("-n", "--cores", "1", "--config",
                     f"data={{source: folder, folder: {{images: {tmp_path}/none, catalogue: {tmp_path}/cat.csv}}}}")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "'data.folder.images'" in out and "'data.folder.catalogue'" in out, out[-2000:]


@pytest.mark.slow
def test_micro_workflow_end_to_end(tmp_path):
    """The whole DAG on a micro config (3 sizes x 2 token budgets x 2 training seeds), in a
    scratch copy of the workflow."""
    work = _scratch_workflow(tmp_path)
    proc = snakemake("--cores", "2", f"--configfile={ROOT / 'tests/data/micro.yaml'}", "all", cwd=work, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    sizes, seeds = ("30K", "85K", "144K"), (0, 1)
    for size in sizes:
        for seed in seeds:  # each run its own checkpoint, metrics, embeddings and probes
            metrics = pd.read_csv(work / f"results/models/{size}/seed{seed}/metrics.csv")
            assert metrics["step"].iloc[-1] == 30
            side = json.loads((work / f"results/models/{size}/seed{seed}/ckpt.json").read_text())
            assert side["seed"] == seed and side["provenance"]["seed"] == seed
            prov = side["provenance"]
            assert prov["data_seed"] == 0 and prov["threads"] == 1 and prov["torch"] and prov["cpu_capability"]
            emb = pd.read_parquet(work / f"results/embeddings/{size}/seed{seed}.parquet")
            assert len(emb) == 256 and emb["id"].is_unique
            run = pd.read_csv(work / f"results/probes/{size}/seed{seed}.csv")
            assert {"mag_r_desi", "est_petro_th50", "redshift"} <= set(run["property"])
            assert (run["n"] + run["n_missing"] + run["n_clipped"] == run["n_total"]).all()
            assert len(pd.read_parquet(work / f"results/probes/{size}/seed{seed}.draws.parquet")) == len(run)
        # the target users ask for: the size's runs combined
        probes = pd.read_csv(work / f"results/probes/{size}.csv")
        scored = probes["value"].notna()  # (a flag too rare in 256 galaxies is not probed: NaN, 0 runs)
        assert scored.sum() > 30 and (probes.loc[scored, "n_runs"] == 2).all() and probes["run_sd"].notna().any()
        paper = probes[probes["protocol"] == "paper"]
        ridge = probes[probes["protocol"] == "ridge_cv"]
        assert (ridge["n_clipped"] == 0).all() and paper["n_clipped"].sum() > 0  # the clip is per protocol
        ok = probes.dropna(subset=["ci_low"])
        assert ((ok["ci_low"] <= ok["value"]) & (ok["value"] <= ok["ci_high"])).all()
    # different training seeds, different runs; the same data
    a, b = (json.loads((work / f"results/models/85K/seed{s}/ckpt.json").read_text()) for s in seeds)
    assert a["final_val_loss"] != b["final_val_loss"]
    fit = json.loads((work / "results/scaling/fit.json").read_text())
    assert fit["n_points"] == 6 and fit["sizes"] == list(sizes) and fit["runs_per_size"] == dict.fromkeys(sizes, 2)
    assert fit["params"]["bootstrap"]["available"] and fit["params"]["bootstrap"]["n_resamples"] == 200
    assert fit["params"]["power_law"]["alpha_boot_ci"] is not None and fit["params"]["preferred"]
    assert fit["compute"]["separate_evidence"] is False
    holdout = fit["holdout"]
    assert holdout["size"] == "144K" and holdout["pi_mean"] and holdout["verdict"]
    losses = pd.read_csv(work / "results/scaling/losses.csv")
    assert len(losses) == 12 and losses["default_budget"].sum() == 6
    assert sorted(losses["budget"].unique()) == ["D3.6K", "D7.2K"]  # 15 and 30 steps x 16 galaxies x 15 positions
    for size in sizes:  # the other budget's runs: their own folders, half the steps
        for seed in seeds:
            metrics = pd.read_csv(work / f"results/models/{size}/D3.6K/seed{seed}/metrics.csv")
            assert metrics["step"].iloc[-1] == 15 and metrics["lr"].iloc[-1] < metrics["lr"].max()
    # the grid: Chinchilla's fit over all 12 runs, approach 2, the held-out corner, the cost table
    grid = fit["grid"]
    assert grid["approach3"]["n_runs"] == 12 and grid["approach3"]["n_N"] == 3 and grid["approach3"]["n_D"] == 2
    assert "levels" in grid["isoflop"] and (grid["isoflop"]["a"] is not None or grid["isoflop"]["reason"])
    assert grid["holdout"]["cell"] and (grid["holdout"].get("predicted") is not None or grid["holdout"]["reason"])
    assert len(fit["cost"]) == 6 and all(r["wall_h"] > 0 and r["runs"] == 2 for r in fit["cost"])
    for fig in ("scaling.png", "loss_curves.png", "downstream.png", "umap_144K.png", "examples.png", "predictions.png",
                "isoflop.png", "frontier.png", "loss_tokens.png"):
        assert (work / "results/figures" / fig).stat().st_size > 10_000
    assert not (work / "results/figures/umap_30K.png").exists()
    for table in ("fit.md", "fit.tex"):
        text = (work / "results/scaling" / table).read_text()
        assert "C (training FLOPs) | power law" in text.replace(" &", " |") and "Chinchilla" in text
    assert "## Training compute (measured)" in (work / "results/scaling/fit.md").read_text()
    down = pd.read_csv(work / "results/probes/summary.csv")
    assert (down.loc[down["value"].notna(), "n_runs"] == 2).all() and "seeds_agree" in down
    summary = (work / "results/summary.md").read_text()
    assert "30K" in summary and "144K" in summary and "`results/scaling/fit.json` (rule `scaling`)" in summary
    assert "3 sizes x 2 training seeds (0, 1)" in summary and "Held-out size: " in summary
    # The report: every figure and the summary, with captions, in one file.
    proc = snakemake("--report", "report.html", f"--configfile={ROOT / 'tests/data/micro.yaml'}", cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (work / "report.html").read_text()
    for name in ("scaling.png", "loss_curves.png", "downstream.png", "umap_144K.png", "examples.png",
                 "predictions.png", "isoflop.png", "frontier.png", "loss_tokens.png", "summary.html",
                 "AstroPT scaling study", "probe_size"):
        assert name in report, name
    for split in ("train", "validation", "test"):
        assert (work / f"results/tokens/{split}/shards/00000.npy").exists()
    train_meta = json.loads((work / "results/tokens/train/meta.json").read_text())
    assert len(train_meta["shards"]) == 4 and train_meta["groups"] == 2 and train_meta["n_galaxies"] == 384
    assert "shards 2-3 of 4" in (work / "logs/tokenise/train/0001-of-0002.log").read_text()
    assert (work / "resources/galaxies/metadata.parquet").exists()
    # Settings that cannot change outputs rerun nothing (params carry only what matters).
    cfg = f"--configfile={ROOT / 'tests/data/micro.yaml'}"
    for change in (
        "tokens={workers: 2, norm: image}",
        "data={synthetic: {workers: 2}}",
        "data={synthetic: {sky_noise: 0.001}, folder: {id_column: objid}}",  # same value (keys reordered); unused source
        "resources={train: {default: {cpus: 2}}}",
        "embed={batch_size: 32}",
    ):
        dry = snakemake("all", "-n", "--cores", "2", cfg, "--config", change, cwd=work)
        assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, (change, dry.stdout[-2000:])
    rejected = pd.read_csv(work / "results/tokens/rejected.csv")
    assert list(rejected.columns) == ["stage", "split", "id", "image_path", "reason"] and rejected.empty


@pytest.mark.slow
def test_folder_source_through_the_workflow(tmp_path):
    """Your own stamps: mixed PNG / JPEG / FITS of two sizes, some broken, through the DAG."""
    fits = pytest.importorskip("astropy.io.fits")
    import numpy as np
    from PIL import Image

    stamps, rng = tmp_path / "stamps", np.random.default_rng(1)
    (stamps / "png").mkdir(parents=True)
    (stamps / "fits").mkdir()
    ids = []
    for i in range(60):
        side = 32 if i % 3 else 40  # every third stamp is larger: centre-cropped
        img = (rng.random((side, side, 3)) * 60 + 100 * np.exp(-((np.arange(side) - side / 2) ** 2) / 20)[:, None, None]).astype(np.uint8)
        name = f"g{i:03d}"
        if i % 4 == 0:
            fits.PrimaryHDU(img.transpose(2, 0, 1).astype(np.float32)).writeto(stamps / "fits" / f"{name}.fits")
        else:
            Image.fromarray(img).save(stamps / "png" / f"{name}.{'jpg' if i % 4 == 1 else 'png'}")
        ids.append(name)
    (stamps / "png" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    (stamps / "fits" / "band1.fits").write_bytes(b"")
    fits.PrimaryHDU(np.zeros((32, 32), np.float32)).writeto(stamps / "fits" / "flat.fits")  # 1 band
    ids += ["broken", "band1", "flat"]
    pd.DataFrame({"id": ids, "redshift": rng.random(len(ids)), "mag_r": rng.normal(20, 1, len(ids))}).iloc[:-1].to_csv(
        tmp_path / "cat.csv", index=False
    )  # "flat" has no catalogue row
    import yaml

    config = yaml.safe_load((ROOT / "tests/data/micro.yaml").read_text())
    config["sizes"], config["umap"]["sizes"] = ["30K"], ["30K"]
    config["train"]["seeds"] = [0]  # a data source's test: one run is enough
    config["data"] = {
        "source": "folder",
        "image_size": 32,
        "folder": {"images": str(stamps), "catalogue": str(tmp_path / "cat.csv"), "val_fraction": 0.2, "test_fraction": 0.2},
    }
    config["tokens"]["fit"] = "crop"
    config["probe"] = {"properties": None}  # every numeric catalogue column
    cfg = tmp_path / "folder.yaml"
    cfg.write_text(yaml.safe_dump(config))
    work = _scratch_workflow(tmp_path)
    proc = snakemake("--cores", "2", f"--configfile={cfg}", "results/tokens/rejected.csv", "results/probes/30K.csv",
                     "results/figures/examples.png", cwd=work)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rejected = pd.read_csv(work / "results/tokens/rejected.csv")
    assert sorted(rejected["id"]) == ["band1", "broken", "flat"]
    assert set(rejected["stage"]) == {"download", "tokenise"}
    kept = sum(len(pd.read_parquet(work / f"results/tokens/{s}/index.parquet")) for s in ("train", "validation", "test"))
    assert kept == 60
    assert json.loads((work / "results/tokens/train/meta.json").read_text())["dtype"] == "float32"
    assert set(pd.read_csv(work / "results/probes/30K.csv")["property"]) == {"redshift", "mag_r"}
    assert (work / "results/figures/examples.png").stat().st_size > 10_000  # float (FITS) tokens shown


@pytest.mark.slow
def test_huggingface_source_through_the_workflow(tmp_path):
    """The HF source offline: a stand-in of Smith42/galaxies (same schema, a few bad rows)
    served by a fake Hub, downloaded, tokenised from inside its parquet shards, probed."""
    import yaml
    from hub_standin import FAKE_COMMIT, UNSET_ENV, fake_hub, hf_env_vars, make_standin_dataset

    st = make_standin_dataset(
        tmp_path / "repo", n_per_split={"train": 256, "validation": 32, "test": 96}, shards_per_split=3,
        image_size=32, duplicate_id=True, missing_metadata=True, null_image=True, corrupt_image=True,
    )
    config = yaml.safe_load((ROOT / "tests/data/micro.yaml").read_text())
    config["sizes"], config["umap"]["sizes"] = ["30K"], ["30K"]
    config["train"]["seeds"] = [0]  # a data source's test: one run is enough
    config["probe"] = {"properties": ["redshift", "mag_r_desi"]}
    env = {k: v for k, v in os.environ.items() if k not in UNSET_ENV}
    env.update(hf_env_vars(tmp_path / "hf_home"))
    work = _scratch_workflow(tmp_path)
    with fake_hub(st.root) as hub:
        config["data"] = {
            "source": "huggingface",
            "image_size": 32,
            "huggingface": {"endpoint": hub.endpoint, "revision": FAKE_COMMIT, "token": "hf_SECRETtoken",
                            "max_galaxies": {"train": 150}},
        }
        cfg = tmp_path / "hf.yaml"
        cfg.write_text(yaml.safe_dump(config))
        targets = ("results/tokens/rejected.csv", "results/probes/30K.csv", "results/figures/examples.png")
        # Kept scripts: what every script job's temporary copy under .snakemake/scripts holds
        # while it runs (and after a kill), checked for the token below.
        proc = snakemake("--cores", "2", f"--configfile={cfg}", "--skip-script-cleanup", *targets, cwd=work, env=env,
                         timeout=900)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        # The token reached the download (HF_TOKEN, not the config the scripts carry).
        assert all(r.authorized for r in hub.requests if r.server == "hub")
        third = "data/train-00002-of-00003.parquet"
        third_served, third_size = hub.bytes_served(third), (st.root / third).stat().st_size
        # Changing only operational keys (workers, retries, the token) reruns nothing.
        config["data"]["huggingface"].update(workers=2, retries=5, token="hf_OTHERtoken")
        cfg.write_text(yaml.safe_dump(config))
        dry = snakemake("-n", "--cores", "2", f"--configfile={cfg}", *targets, cwd=work, env=env)
        assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-2000:]

    # 150 of 256 training galaxies: of the 3rd of 3 shards (~86 rows each) only the footer is read
    assert third_served < third_size / 2
    rejected = pd.read_csv(work / "results/tokens/rejected.csv").set_index("id")
    planted = st.planted
    assert rejected.loc[planted["missing_metadata"], "reason"] == "no metadata row"
    assert rejected.loc[planted["null_image"], "stage"] == "download"
    assert rejected.loc[planted["corrupt_image"], "stage"] == "tokenise"
    assert rejected.loc[planted["corrupt_image"], "reason"].startswith("unreadable")
    assert rejected.loc[planted["duplicate_id"], "reason"].startswith("duplicate id")
    meta = pd.read_parquet(work / "resources/galaxies/metadata.parquet")
    assert (meta["split"] == "train").sum() <= 150 and meta["image_path"].str.startswith("hf/data/").all()
    kept = {s: len(pd.read_parquet(work / f"results/tokens/{s}/index.parquet")) for s in ("train", "validation", "test")}
    assert kept["validation"] == 31 and kept["test"] == (meta["split"] == "test").sum()
    source = json.loads((work / "resources/galaxies/source.json").read_text())
    assert source["commit"] == FAKE_COMMIT
    probes = pd.read_csv(work / "results/probes/30K.csv")
    assert set(probes["property"]) == {"redshift", "mag_r_desi"}
    assert (work / "results/figures/examples.png").stat().st_size > 10_000
    # The access token is never written anywhere Snakemake keeps things, nor logged, nor in a
    # script job's copy (a killed job leaves it).
    assert list(work.joinpath(".snakemake", "scripts").glob("*.py"))
    for path in [*work.joinpath(".snakemake").rglob("*"), *work.joinpath("logs").rglob("*.log")]:
        if path.is_file():
            text = path.read_bytes()
            assert b"SECRETtoken" not in text and b"OTHERtoken" not in text, path


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/paper.yaml", "config/grid.yaml"])
def test_lint_is_clean(configfile):
    proc = snakemake("--lint", f"--configfile={configfile}")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_config_parse_does_not_import_torch():
    """Every parse (and every job start) reads the config: it must not pay torch's import,
    with trained models or with the released weights (whose file names and checks it uses)."""
    code = ("import sys, astropt.config as c; cfg = c.load_config('config/config.yaml'); "
            "cfg.size_spec('309M'); c.spec_to_json(cfg.size_spec('42K'), cfg.train_config('42K')); "
            "import yaml; raw = yaml.safe_load(open('config/paper.yaml')); raw['models'] = {'source': 'released'}; "
            "c.load_config(raw); c.repo_file('89M'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
