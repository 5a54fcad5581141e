"""figure_grid rule: the N x D grid's IsoFLOP profiles, compute-optimal frontier and loss
against training tokens, from fit.json's "grid" section and losses.csv."""

from astropt.figures import figure_grid
from astropt.io import script_log

log = script_log(snakemake)  # noqa: F821
inp, out = snakemake.input, snakemake.output  # noqa: F821
figure_grid(inp.fit, inp.table, out.isoflop, out.frontier, out.loss_tokens, log=log)
