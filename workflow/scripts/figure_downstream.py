"""figure_downstream rule: probe scores relative to the smallest model, per property, protocol and metric."""

from astropt.figures import figure_downstream
from astropt.io import script_log

log = script_log(snakemake)  # noqa: F821
figure_downstream(snakemake.input[0], snakemake.output[0], log=log)  # noqa: F821
