"""figure_loss_curves rule: training and validation loss of every size against tokens seen."""

from astropt.figures import figure_loss_curves
from astropt.io import script_log

log = script_log(snakemake)  # noqa: F821
figure_loss_curves(snakemake.input.metrics, snakemake.input.sidecars, snakemake.output[0], log=log)  # noqa: F821
