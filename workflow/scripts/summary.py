"""summary rule: the headline numbers, results/summary.md (and .html for the report)."""

from astropt import pipeline

log = pipeline.script_log(snakemake)  # noqa: F821
pipeline.summary(
    snakemake.input.sidecars,  # noqa: F821
    snakemake.input.fit,  # noqa: F821
    snakemake.input.probes,  # noqa: F821
    snakemake.input.downstream,  # noqa: F821
    snakemake.output.md,  # noqa: F821
    snakemake.output.html,  # noqa: F821
    snakemake.config,  # noqa: F821
    log=log,
)
