"""downstream rule: every size's probe scores relative to the smallest model's, with
Spearman's rho (results/probes/summary.csv)."""

from astropt.io import script_log
from astropt.probe import downstream_summary

log = script_log(snakemake)  # noqa: F821
downstream_summary(snakemake.input.probes, snakemake.input.sidecars, snakemake.output[0], log=log)  # noqa: F821
