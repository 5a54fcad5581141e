"""The runs of a study: where a run's files live and the table of runs from their ``ckpt.json``.

A run is one training of a size with one training seed, at the size's default token budget
(``results/models/{size}/seed{seed}/``) or another one (``results/models/{size}/D806K/seed{seed}/``,
``train.budgets``). Its files elsewhere are named after it: ``results/probes/{size}/seed{seed}.csv``.

Example::

    from astropt.runs import load_sidecars, run_name

    run_name("results/probes/89M/seed1.csv")  # ("89M", 1)
    table = load_sidecars(glob.glob("results/models/*/seed*/ckpt.json"))  # one row per run
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from astropt.config import format_tokens
from astropt.record import RunRecord

__all__ = ["PROVENANCE_COLUMNS", "load_sidecars", "run_budget", "run_name"]


def run_name(path: str | Path) -> tuple[str, int]:
    """``(size, seed)`` of a run's file: ``results/models/{size}/seed{seed}/...`` or
    ``results/models/{size}/D<tokens>/seed{seed}/...`` (the folder), or
    ``results/{stage}/{size}/seed{seed}.ext`` (the file name)."""
    path = Path(path)
    above = path.parent.parent
    folder_size = above.parent.name if run_budget(path) else above.name  # .../{size}/D403K/seed0/
    for size, stem in ((folder_size, path.parent.name), (path.parent.name, path.name.split(".")[0])):
        if stem.startswith("seed") and stem[4:].isdigit():
            return size, int(stem[4:])
    raise ValueError(f"{path}: not a run's file (expected .../{{size}}/seed{{n}}/... or .../{{size}}/seed{{n}}.ext)")


#: Provenance of a run read from its ``ckpt.json`` (``astropt.train.provenance``).
PROVENANCE_COLUMNS = ("data_seed", "threads", "cpu_capability", "cpu", "gpu", "torch", "host")


def run_budget(path: str | Path) -> str:
    """The token budget in a run's path: ``"D403K"`` for ``results/models/{size}/D403K/seed{n}/...``,
    ``""`` for the size's default budget (``results/models/{size}/seed{n}/...``)."""
    folder = Path(path).parent.parent.name
    return folder if re.fullmatch(r"D[0-9.]+[KMGT]?", folder) else ""


def load_sidecars(paths) -> pd.DataFrame:
    """One row per run from the ``ckpt.json`` sidecars (``results/models/{size}/seed{seed}/``,
    or ``.../{size}/D<tokens>/seed{seed}/`` for another token budget), sorted by parameters,
    tokens, then seed. ``seed`` is the run's training seed (from its folder); ``budget`` its
    tokens as a folder name (``D806K``), ``default_budget`` whether it is the size's default
    budget (``train.steps``: the runs the fit over N, the probes and the maps use); the run's
    provenance (:data:`PROVENANCE_COLUMNS`: data seed, threads, CPU kernels or GPU, torch)
    follows, None where the sidecar does not record it (the released weights)."""
    rows = []
    for p in paths:
        run = RunRecord.read(p)
        prov = run.provenance or {}
        budget = run_budget(p)
        rows.append(
            {
                "size": run.size,
                "seed": run_name(p)[1],
                "budget": budget or f"D{format_tokens(int(run.tokens_seen))}",
                "default_budget": not budget,
                "params": run.params,
                "val_loss": run.final_val_loss,
                "best_val_loss": run.best_val_loss,
                "flops": run.flops,
                "tokens_seen": run.tokens_seen,
                "elapsed_s": run.elapsed_s,
                "gpu_hours": run.gpu_hours,  # None for the released weights (their cost is not recorded)
                **{col: prov.get(col) for col in PROVENANCE_COLUMNS},
            }
        )
    table = pd.DataFrame(rows).sort_values(["params", "tokens_seen", "seed"], ignore_index=True)
    for col in ("elapsed_s", "gpu_hours"):  # None (released weights) -> NaN
        table[col] = pd.to_numeric(table[col], errors="coerce")
    return table
