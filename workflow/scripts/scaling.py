"""scaling rule: fit every run's final validation loss against parameters and training compute
(fit.json, fit.md, fit.tex): analytic and bootstrap intervals, and the held-out size."""

from astropt.io import script_log
from astropt.scaling import write_fits

log = script_log(snakemake)  # noqa: F821
out = snakemake.output  # noqa: F821
write_fits(
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
