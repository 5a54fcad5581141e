"""figure_scaling rule: loss vs parameters and vs training compute, with the fits and the
validation curves."""

from astropt.figures import figure_scaling
from astropt.io import script_log

log = script_log(snakemake)  # noqa: F821
inp = snakemake.input  # noqa: F821
figure_scaling(inp.fit, inp.table, inp.metrics, snakemake.output[0], log=log)  # noqa: F821
