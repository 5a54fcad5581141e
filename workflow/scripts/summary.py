"""summary rule: the headline numbers, results/summary.md (and .html for the report)."""

from astropt.io import script_log
from astropt.summary import write_summary

log = script_log(snakemake)  # noqa: F821
write_summary(
    snakemake.input.sidecars,  # noqa: F821
    snakemake.input.fit,  # noqa: F821
    snakemake.input.probes,  # noqa: F821
    snakemake.input.downstream,  # noqa: F821
    snakemake.output.md,  # noqa: F821
    snakemake.output.html,  # noqa: F821
    snakemake.config,  # noqa: F821
    log=log,
)
