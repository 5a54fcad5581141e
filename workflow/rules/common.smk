# Helpers shared by the rule files (config validation, paths, per-size settings).
import json
import os
import re
import sys
from pathlib import Path

from snakemake.utils import validate

# The astropt library is installed with the workflow's environment (README: `make env`, or
# `pip install --no-deps -e .` in the conda environment of environment.yml), so the parse and
# every job (local or on SLURM) import it without path changes.
try:
    from astropt.config import (
        SPLITS, ConfigError, gpu_memory_refusal, input_problems, known_sizes, load_config, repo_file,
    )
except ImportError as err:
    sys.exit(f"The astropt library is not importable ({err}): install it with `pip install --no-deps -e .`")

try:
    CFG = load_config(config)
except ConfigError as err:
    sys.exit(f"Error in the workflow config (config/config.yaml or --configfile/--config):\n{err}")
# Files the config names must exist where the workflow starts (before any job is planned).
if workflow.is_main_process and (missing := input_problems(CFG)):
    sys.exit("Error in the workflow config (config/config.yaml or --configfile/--config):\n  " + "\n  ".join(missing))
# Scripts see the validated config with every default filled in. The same schema through
# Snakemake's validator (after load_config, which coerces --config strings and names the key
# at fault in its errors): the snakemake-workflows convention.
config.update(CFG.raw)
validate(config, "../schemas/config.schema.yaml", set_default=True)
# Snakemake pickles `config` into every script job's temporary copy under .snakemake/scripts
# (a killed job leaves it there): a Hub token in the config goes to the jobs as HF_TOKEN
# instead, through this process's environment (the download runs where Snakemake runs).
if (config["data"].get("huggingface") or {}).get("token"):
    os.environ.update(HF_TOKEN=config["data"]["huggingface"]["token"])
    config["data"]["huggingface"]["token"] = None

SIZES = CFG.sizes
# Training seeds: every size is trained once per seed (train.seeds), each run its own job.
SEEDS = CFG.seeds
# The run that stands for its size where one model is shown (UMAP, predictions).
FIRST_SEED = SEEDS[0]
EMBED_SPLIT = CFG.embed["split"]


wildcard_constraints:
    # Only known size names (so results/probes/summary.csv is not a size's probe table).
    size="|".join(re.escape(s) for s in known_sizes(CFG)),
    seed=r"\d+",
    # A run's token budget in its path: "" (the default budget) or "D<tokens>/" (train.budgets)
    budget=r"(D[0-9.]+[KMGT]?/)?",
    split="|".join(SPLITS),
    part=r"\d{4}-of-\d{4}",


def runs(pattern):
    """`pattern` (with {size} and {seed}) for every run of the config: each size x seed."""
    return expand(pattern, size=SIZES, seed=SEEDS)


def grid_runs(pattern):
    """`pattern` (with {size}, {budget} and {seed}) for every run of the grid: each size x token
    budget (train.budgets, the default budget included) x seed."""
    return [
        pattern.format(size=size, budget=budget.path, seed=seed)
        for size in SIZES
        for budget in CFG.budgets(size)
        for seed in SEEDS
    ]


def size_runs(pattern):
    """`pattern` for every run (seed) of the size in the job's wildcards."""
    return lambda wildcards: expand(pattern, size=wildcards.size, seed=SEEDS)


def final_outputs():
    """Every file `rule all` builds for the sizes in the config."""
    return [
        *expand("results/probes/{size}.csv", size=SIZES),
        "results/tokens/rejected.csv",
        "results/scaling/fit.json",
        "results/summary.md",
        "results/figures/scaling.png",
        "results/figures/loss_curves.png",
        "results/figures/downstream.png",
        "results/figures/examples.png",
        "results/figures/predictions.png",
        *expand("results/figures/umap_{size}.png", size=CFG.umap_sizes),
        *(GRID_FIGURES if CFG.grid else []),
    ]


# The N x D grid's figures (train.budgets): made only when some size has several budgets.
GRID_FIGURES = [
    "results/figures/isoflop.png",
    "results/figures/frontier.png",
    "results/figures/loss_tokens.png",
]


def train_spec(wildcards):
    """JSON handed to `python -m astropt.train --spec`: the size, its training settings (its
    steps and schedule from the run's token budget) and the run's training seed.

    Only settings that affect training are in it, so changing, say, a figure option
    does not retrain the models (Snakemake reruns a job when its params change).
    """
    from astropt.config import spec_to_json

    try:
        spec = CFG.size_spec(wildcards.size)
        budget = CFG.budget(wildcards.size, wildcards.budget)
    except ConfigError as err:
        raise ValueError(str(err)) from None
    check_run_cost(wildcards.size, budget)
    cfg = CFG.train_config(wildcards.size, seed=int(wildcards.seed), budget=budget)
    return json.dumps(spec_to_json(spec, cfg), sort_keys=True)


def size_cost(size, budget=None):
    """One training run of `size` (at its token `budget`, default `train.steps`) under this
    config: parameters, tokens, FLOPs, estimated hours."""
    from astropt.compute import run_cost

    spec, tc = CFG.size_spec(size), CFG.train_config(size, budget=budget)
    return run_cost(
        spec.model.to_dict(),
        tc.steps,
        tc.micro_batch * tc.grad_accum,
        mfu=CFG.raw["train"]["assumed_mfu"],
        peak_tflops=tc.peak_tflops,
        threads=CFG.resources("train", size).cpus,
    )


_COST_CHECKED = set()


def check_run_cost(size, budget=None):
    """While the DAG is built (so `snakemake -n` shows it), once per size and budget: warn when
    a target asks for a size outside the config's `sizes`, with its cost, and refuse a run that
    would train on the CPU for longer than `train.max_cpu_hours` (astropt.compute.cpu_refusal)
    or not fit its GPUs' declared memory (`gpu_mem_gb`; the config check covers `sizes`)."""
    key = (size, budget.label if budget else "")
    if key in _COST_CHECKED:
        return
    _COST_CHECKED.add(key)
    from astropt.compute import cpu_refusal

    cost = size_cost(size, budget)
    if size not in SIZES:
        print(
            f"Warning: size {size} is not in this config's sizes ({', '.join(SIZES)}), but a "
            f"target needs it; one training run: {cost.describe()}",
            file=sys.stderr,
        )
        if too_big := gpu_memory_refusal(CFG, size):
            raise ValueError(too_big)
    why = cpu_refusal(size, cost, CFG.raw["train"]["max_cpu_hours"])
    # torch (to look for a GPU) only for a run that is long enough to be refused
    if why and CFG.resources("train", size).gpus == 0:
        if CFG.raw["train"]["device"] == "cpu" or not gpu_visible():
            raise ValueError(why)


def gpu_visible():
    import torch

    return torch.cuda.is_available()


def training_plan():
    """One line: the config's training runs and their estimated cost (printed before a run)."""
    from astropt.compute import format_hours

    costs = [size_cost(size, budget) for size in SIZES for budget in CFG.budgets(size)]
    flops = sum(c.flops for c in costs) * len(SEEDS)
    gpu_h = sum(c.gpu_hours for c in costs) * len(SEEDS)
    cpu_h = sum(c.cpu_hours for c in costs) * len(SEEDS)
    c = costs[0]
    budgets = f" x {len(costs) / len(SIZES):.3g} token budgets" if CFG.grid else ""
    return (
        f"Training plan: {len(costs) * len(SEEDS)} runs ({len(SIZES)} sizes{budgets} x {len(SEEDS)} "
        f"seed{'s' if len(SEEDS) > 1 else ''}), {flops:.3g} FLOPs: about {format_hours(gpu_h)} "
        f"GPU-hours at {c.mfu:.0%} MFU of a {c.gpu_peak_flops / 1e12:.0f} TFLOP/s GPU, or at "
        f"least {format_hours(cpu_h)} CPU-hours (astropt/compute.py)"
    )


def train_launcher(wildcards):
    """How the train rule starts the ranks of one size.

    One process: this Python. Several GPUs on one node: astropt.launch (torchrun
    --standalone, one rank per GPU). Several nodes: one srun task per node, each running
    astropt.launch, which finds the rendezvous host inside the step (the SLURM executor
    strips SLURM_* variables from the rule's shell, so it cannot be computed here).
    `sys.executable`, not `python`: the jobs must use the environment Snakemake runs in
    even when it is not activated (e.g. `.venv/bin/snakemake`).
    """
    r = CFG.resources("train", wildcards.size)
    if r.nodes > 1:
        return (
            f"srun --ntasks={r.nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 "
            f"{sys.executable} -m astropt.launch --nnodes={r.nodes} --nproc-per-node={r.gpus} --"
        )
    if r.gpus > 1:
        return f"{sys.executable} -m astropt.launch --nproc-per-node={r.gpus} --"
    return sys.executable


def job_resources(rule_name):
    """Snakemake/SLURM resources of a rule, per size for train and embed.

    A multi-node training job asks for `nodes` nodes, one task each (`tasks`, with `mpi`
    telling the SLURM executor that the rule's own `srun` places the tasks) and `gpus`
    GPUs per node (`--gres=gpu:G`); one node asks for `--gpus=G`. Keys whose value is
    None are left out of the submission.
    """

    def res(wildcards):
        return CFG.resources(rule_name, getattr(wildcards, "size", None))

    def multi(wildcards):
        return rule_name == "train" and res(wildcards).nodes > 1

    return {
        # A retried job (profile `retries`) gets more time.
        "runtime": lambda wc, attempt: res(wc).runtime * attempt,
        "mem_mb": lambda wc: res(wc).mem_mb,
        "gpu": lambda wc: 0 if multi(wc) else res(wc).gpus,
        "gres": lambda wc: f"gpu:{res(wc).gpus}" if multi(wc) else None,
        "nodes": lambda wc: res(wc).nodes if multi(wc) else None,
        "tasks": lambda wc: res(wc).nodes if multi(wc) else None,
        "mpi": lambda wc: "srun" if multi(wc) else None,
        # torchrun starts the ranks: never ask for --ntasks-per-gpu.
        "tasks_per_gpu": 0,
        **({"slurm_extra": lambda wc: stop_signal(multi(wc))} if rule_name == "train" else {}),
    }


def stop_signal(multi_node):
    """sbatch --signal for a training job: SLURM's warning `train.signal_lead_s` before
    the time limit, on which the trainer checkpoints and exits 75 (then the job is retried).

    Measured on a real SLURM (tests/test_slurm.py): the warning reaches every process of the
    job's steps, not the batch shell. A one-node job runs the rule inside the executor's
    srun step under a second Snakemake, which SIGUSR1 would kill and SIGTERM leaves waiting
    for the trainer: TERM (under torchrun, on one node with several GPUs, the agent also
    gets TERM and kills ranks still running 30 s later: time enough to save up to 830M). A
    multi-node job runs its own srun step holding only astropt.launch (which ignores USR1)
    and the ranks: USR1, with no such deadline.
    """
    lead = CFG.raw["train"]["signal_lead_s"]
    return f"--signal={'USR1' if multi_node else 'TERM'}@{lead}"


def train_priority(wildcards):
    """Training jobs by size, the largest first: the longest jobs start early (longest-first
    scheduling). Above them: the data (3), then a finished run's embedding, probes and map (2),
    which keeps the UMAP (a minute on one core) from running alone at the end."""
    from astropt.config import parse_size_name

    return 1 + (parse_size_name(wildcards.size) or 0.0) / 1e12


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
    from astropt.shards import part_name

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


# Where the models come from: trained here (`train`) or the released AstroPT v1 weights
# (`released_model`, workflow/rules/train.smk; README, "The released weights").
MODELS_SOURCE = CFG.raw["models"]["source"]
if MODELS_SOURCE == "trained" and workflow.is_main_process:
    print(training_plan(), file=sys.stderr)


def released_params(wildcards):
    """The released-weights settings one size's checkpoint depends on: repo, revision and its file.

    The endpoint and cache folder are left out (read by the script from `snakemake.config`):
    moving the cache or using a mirror does not fetch the models again.
    """
    released = CFG.raw["models"]["released"]
    return {
        "repo": released["repo"],
        "revision": released["revision"],
        "file": repo_file(wildcards.size, released["path"]),
    }
