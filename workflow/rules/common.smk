# Helpers shared by the rule files: config validation, paths, per-size settings.
import json
import os
import sys
from pathlib import Path

# Make the astropt library importable here and in every job (local or on SLURM)
# even when it is not pip-installed.
_REPO = str(Path(workflow.basedir).resolve())
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_REPO, os.environ.get("PYTHONPATH", "")) if p
)

from astropt.config import ConfigError, load_config

try:
    CFG = load_config(config)
except ConfigError as err:
    sys.exit(f"Error in the workflow config (config/config.yaml or --configfile/--config):\n{err}")
# Scripts see the validated config with every default filled in.
config.update(CFG.raw)

SIZES = CFG.sizes
SPLITS = ["train", "validation", "test"]
EMBED_SPLIT = CFG.embed["split"]


wildcard_constraints:
    size=r"[A-Za-z0-9_.-]+",
    split="|".join(SPLITS),
    part=r"\d{4}-of-\d{4}",


def final_outputs():
    """Every file `rule all` builds for the sizes in the config."""
    return [
        *expand("results/probes/{size}.csv", size=SIZES),
        "results/tokens/rejected.csv",
        "results/scaling/fit.json",
        "results/figures/scaling.png",
        "results/figures/downstream.png",
        "results/figures/examples.png",
        *expand("results/figures/umap_{size}.png", size=CFG.umap_sizes),
    ]


def train_spec(wildcards):
    """JSON handed to `python -m astropt.train --spec`: the size and its training settings.

    Only settings that affect training are in it, so changing, say, a figure option
    does not retrain the models (Snakemake reruns a job when its params change).
    """
    from astropt.train import spec_to_json

    try:
        spec = CFG.size_spec(wildcards.size)
    except ConfigError as err:
        raise ValueError(str(err)) from None
    return json.dumps(spec_to_json(spec, CFG.train_config(wildcards.size)), sort_keys=True)


def train_launcher(wildcards):
    """This Python for one process, torchrun (one rank per GPU) for more than one GPU.

    `sys.executable`, not `python`: the jobs must use the environment Snakemake runs in
    even when it is not activated (e.g. `.venv/bin/snakemake`).
    """
    gpus = CFG.resources("train", wildcards.size).gpus
    if gpus > 1:
        return f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node={gpus}"
    return sys.executable


def job_resources(rule_name):
    """Snakemake/SLURM resources of a rule, per size for train and embed."""

    def _get(wildcards, attempt, key):
        r = CFG.resources(rule_name, getattr(wildcards, "size", None))
        value = getattr(r, key)
        # A retried job (profile `retries`) gets more time.
        return value * attempt if key == "runtime" else value

    return {
        "runtime": lambda wc, attempt: _get(wc, attempt, "runtime"),
        "mem_mb": lambda wc, attempt: _get(wc, attempt, "mem_mb"),
        "gpu": lambda wc, attempt: _get(wc, attempt, "gpus"),
        # One task per job; torchrun starts the ranks (don't ask for --ntasks-per-gpu).
        "tasks_per_gpu": 0,
    }


def job_threads(rule_name):
    return lambda wildcards: CFG.resources(rule_name, getattr(wildcards, "size", None)).cpus


def output_params(section, *operational):
    """A config section minus keys that cannot change a rule's outputs (worker counts...),
    with its keys sorted at every level.

    Snakemake reruns a job whose params change; settings such as the number of worker
    processes must not trigger that (the scripts read them from `snakemake.config`), and
    neither must the order in which a config file happens to list its keys.
    """
    kept = {k: v for k, v in section.items() if k not in operational}
    return json.loads(json.dumps(kept, sort_keys=True))


def token_parts(wildcards):
    """The files of every tokenise job (shard group) of a split."""
    from astropt.tokenise import part_name

    jobs = CFG.token_jobs(wildcards.split)
    stems = [f"results/tokens/{wildcards.split}/parts/{part_name(g, jobs)}" for g in range(jobs)]
    return [f"{s}{ext}" for s in stems for ext in (".parquet", ".rejected.csv", ".json")]


def image_column():
    """Column of encoded images in the HuggingFace source's parquet shards (unused otherwise)."""
    hf = CFG.data.get("huggingface") or {}
    return hf.get("image_column", "image") if CFG.data["source"] == "huggingface" else "image"


# Settings of a data source that cannot change the download's outputs (or only decide
# whether it fails): passed to the job through `snakemake.config`, never as params (params
# are stored under .snakemake/, and a token must not be).
OPERATIONAL_DATA_KEYS = {
    "synthetic": ("workers",),
    "folder": (),
    "huggingface": ("workers", "retries", "token", "endpoint", "max_reject_fraction"),
}


def download_params():
    """The data settings the download's outputs depend on: only the chosen source's."""
    data, source = CFG.data, CFG.data["source"]
    chosen = {"source": source, "image_size": data["image_size"], "n_chan": data["n_chan"]}
    if source in data:
        chosen[source] = output_params(data[source], *OPERATIONAL_DATA_KEYS.get(source, ()))
    return output_params(chosen)
