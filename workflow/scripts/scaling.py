"""scaling rule: fit every run's final validation loss against parameters and training compute
(fit.json, fit.md, fit.tex): analytic and bootstrap intervals, and the held-out size."""

from astropt import pipeline

log = pipeline.script_log(snakemake)  # noqa: F821
out = snakemake.output  # noqa: F821
pipeline.scaling(
    snakemake.input.sidecars,  # noqa: F821
    out.fit,
    out.table,
    out.md,
    out.tex,
    out.csv,
    scaling_cfg=snakemake.params.scaling,  # noqa: F821
    holdout=snakemake.params.holdout,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    log=log,
)
