"""figure_downstream rule: probe scores relative to the smallest model, per property, protocol and metric."""

from astropt import pipeline

log = pipeline.script_log(snakemake)  # noqa: F821
pipeline.figure_downstream(
    snakemake.input.probes,  # noqa: F821
    snakemake.input.sidecars,  # noqa: F821
    snakemake.output.figure,  # noqa: F821
    snakemake.output.table,  # noqa: F821
    log=log,
)
