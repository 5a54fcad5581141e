"""figure_loss_curves rule: training and validation loss of every size against tokens seen."""

from astropt import pipeline

log = pipeline.script_log(snakemake)  # noqa: F821
pipeline.figure_loss_curves(snakemake.input.metrics, snakemake.input.sidecars, snakemake.output[0], log=log)  # noqa: F821
