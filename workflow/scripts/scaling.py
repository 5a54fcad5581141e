"""scaling rule: fit final validation loss against parameters and training compute (fit.json,
fit.md, fit.tex)."""

from astropt import pipeline

log = pipeline.script_log(snakemake)  # noqa: F821
out = snakemake.output  # noqa: F821
pipeline.scaling(snakemake.input.sidecars, out.fit, out.table, out.md, out.tex, out.csv, log=log)  # noqa: F821
