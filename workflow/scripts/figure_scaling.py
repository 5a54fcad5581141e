"""figure_scaling rule: loss vs parameters with the fit."""

from astropt import pipeline

log = pipeline.script_log(snakemake)  # noqa: F821
pipeline.figure_scaling(snakemake.input.fit, snakemake.input.table, snakemake.output[0], log=log)  # noqa: F821
